"""OSTrack loss pieces checked against hand-computed values, and a few optimiser steps that must reduce the loss."""

from __future__ import annotations

import math

import pytest
import torch

from srft_peft.tracking import (
    OSTrackRGBX,
    TrackerConfig,
    focal_loss,
    gaussian_heatmap,
    gaussian_radius,
    generalized_box_iou,
    giou_loss,
    tracking_loss,
)


def test_gaussian_radius_hand_value():
    # w = h = 8 cells, min_overlap 0.7: the third root (-2·0.7·16 + sqrt((2·0.7·16)^2 + 4·2.8·0.3·64)) / 2 is smallest
    r = gaussian_radius(torch.tensor([8.0]), torch.tensor([8.0]))
    expected = (-22.4 + math.sqrt(22.4**2 + 4 * 2.8 * 0.3 * 64)) / 2
    assert r.item() == pytest.approx(expected, rel=1e-6)
    assert r.item() == pytest.approx(2.18656, abs=1e-5)


def test_gaussian_heatmap_peak_at_box_centre_and_hand_values():
    hm = gaussian_heatmap(torch.tensor([[0.25, 0.25, 0.5, 0.5]]), 16)  # 8x8 cells centred on cell (8, 8)
    assert hm.shape == (1, 1, 16, 16)
    m = hm[0, 0]
    assert m[8, 8].item() == 1.0 and int(m.argmax()) == 8 * 16 + 8
    assert int((m == 1).sum()) == 1
    sigma = (2 * 2 + 1) / 6  # radius floor(2.19) = 2
    assert m[8, 9].item() == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-5)
    assert m[10, 10].item() == pytest.approx(math.exp(-8 / (2 * sigma**2)), rel=1e-5)
    assert m[8, 11].item() == 0 and m[11, 8].item() == 0 and m[5, 8].item() == 0
    torch.testing.assert_close(m, m.T)  # square box -> symmetric


def test_gaussian_heatmap_small_off_centre_edge_and_invisible_boxes():
    boxes = torch.tensor(
        [
            [0.5, 0.25, 0.01, 0.01],  # tiny: radius 0 -> a single cell at column round(8.08)=8, row round(4.08)=4
            [0.9, 0.9, 0.3, 0.3],  # runs off the crop: centre clamped into the grid
            [0.2, 0.2, 0.3, 0.3],  # absent
        ]
    )
    hm = gaussian_heatmap(boxes, 16, visible=torch.tensor([True, True, False]))
    assert hm[0, 0, 4, 8] == 1 and int((hm[0] > 0).sum()) == 1
    assert hm[1, 0, 15, 15] == 1
    assert hm[2].abs().sum() == 0


def test_giou_identical_disjoint_and_hand_case():
    b = torch.tensor([[0.1, 0.2, 0.5, 0.7]])
    assert giou_loss(b, b).item() == pytest.approx(0.0, abs=1e-6)
    # [0,0,2,2] vs [1,1,3,3]: inter 1, union 7, enclosing 9 -> giou = 1/7 - 2/9
    p, t = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    giou, iou = generalized_box_iou(p, t)
    assert iou.item() == pytest.approx(1 / 7, rel=1e-5)
    assert giou_loss(p, t).item() == pytest.approx(1 - (1 / 7 - 2 / 9), rel=1e-5)
    # disjoint [0,0,1,1] vs [2,0,3,1]: iou 0, union 2, enclosing 3 -> loss 1 + 1/3
    d = giou_loss(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[2.0, 0.0, 3.0, 1.0]]), reduction="none")
    assert d.shape == (1,) and d.item() == pytest.approx(4 / 3, rel=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        giou_loss(p, t, reduction="median")


def test_focal_loss_hand_case():
    pred = torch.tensor([[[[0.9, 0.2], [0.1, 0.5]]]])
    target = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    pos = math.log(0.9) * 0.1**2
    neg = math.log(0.8) * 0.2**2 * 0.5**4 + math.log(0.9) * 0.1**2 + math.log(0.5) * 0.5**2
    assert focal_loss(pred, target).item() == pytest.approx(-(pos + neg) / 1, rel=1e-5)
    # two positives -> divided by 2; no positive -> divided by 1
    pred2 = torch.tensor([[[[0.9, 0.6]]]])
    two = -(math.log(0.9) * 0.1**2 + math.log(0.6) * 0.4**2) / 2
    assert focal_loss(pred2, torch.ones(1, 1, 1, 2)).item() == pytest.approx(two, rel=1e-5)
    none = -(math.log(0.1) * 0.9**2)
    assert focal_loss(torch.tensor([[[[0.9]]]]), torch.zeros(1, 1, 1, 1)).item() == pytest.approx(none, rel=1e-5)


def test_tracking_loss_perfect_boxes_weights_and_visibility():
    gt = torch.tensor([[0.2, 0.3, 0.4, 0.2], [0.5, 0.5, 0.25, 0.25]])
    pred_boxes = torch.stack([gt[:, 0] + gt[:, 2] / 2, gt[:, 1] + gt[:, 3] / 2, gt[:, 2], gt[:, 3]], 1)
    score = gaussian_heatmap(gt, 16).clamp(1e-4, 1 - 1e-4)
    loss, parts = tracking_loss({"score_map": score, "pred_boxes": pred_boxes}, gt)
    assert parts["giou"].item() == pytest.approx(0, abs=1e-5) and parts["l1"].item() == pytest.approx(0, abs=1e-7)
    assert parts["iou"].item() == pytest.approx(1, abs=1e-5)
    assert loss.item() == pytest.approx(parts["focal"].item(), abs=1e-4)
    weighted = parts["focal"] + 2 * parts["giou"] + 5 * parts["l1"]  # default weights 1, 2, 5
    assert loss.item() == pytest.approx(weighted.item(), rel=1e-6)

    bad = pred_boxes.clone()
    bad[1] = torch.tensor([0.9, 0.1, 0.05, 0.05])
    _, p_all = tracking_loss({"score_map": score, "pred_boxes": bad}, gt)
    loss_v, p_vis = tracking_loss({"score_map": score, "pred_boxes": bad}, gt, visible=torch.tensor([True, False]))
    assert p_all["giou"] > 0.3 and p_vis["giou"].item() == pytest.approx(0, abs=1e-5)
    loss_w, p_w = tracking_loss({"score_map": score, "pred_boxes": bad}, gt, weights={"giou": 0.0, "l1": 1.0})
    assert loss_w.item() == pytest.approx(p_w["focal"].item() + p_w["l1"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="unknown"):
        tracking_loss({"score_map": score, "pred_boxes": bad}, gt, weights={"cls": 1.0})
    with pytest.raises(ValueError, match="search_box"):
        tracking_loss({"score_map": score, "pred_boxes": bad}, gt[:1])


def test_few_optimizer_steps_reduce_loss():
    torch.manual_seed(0)
    model = OSTrackRGBX(TrackerConfig(variant="tiny", template_size=32, search_size=64)).train()
    g = torch.Generator().manual_seed(0)
    z, x = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 64, 64, generator=g)
    box = torch.tensor([[0.3, 0.4, 0.25, 0.2], [0.55, 0.2, 0.3, 0.35]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-4)
    losses = []
    for _ in range(12):
        out = model(z, x, search_box=box)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(out.loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses
