"""OSTrack tracking loss: focal loss on a Gaussian heatmap + GIoU + L1 on normalized boxes.

Example:
    >>> import torch
    >>> out = {"score_map": torch.full((2, 1, 16, 16), 0.01), "pred_boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2)}
    >>> loss, parts = tracking_loss(out, torch.tensor([[0.4, 0.4, 0.2, 0.2]] * 2))
    >>> sorted(parts)
    ['focal', 'giou', 'iou', 'l1']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "DEFAULT_LOSS_WEIGHTS",
    "box_cxcywh_to_xyxy",
    "box_xywh_to_xyxy",
    "focal_loss",
    "gaussian_heatmap",
    "gaussian_radius",
    "generalized_box_iou",
    "giou_loss",
    "tracking_loss",
]

DEFAULT_LOSS_WEIGHTS: dict[str, float] = {"focal": 1.0, "giou": 2.0, "l1": 5.0}


def box_xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) x, y, w, h (top-left) -> x1, y1, x2, y2."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) cx, cy, w, h -> x1, y1, x2, y2."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def gaussian_radius(height: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.7) -> torch.Tensor:
    """CenterNet's Gaussian radius (the form used by CenterNet and OSTrack), elementwise on tensors.

    Smallest of the three corner-shift radii that keep IoU >= ``min_overlap``; inputs in heatmap cells.
    """
    h, w = height.double(), width.double()
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt((b1**2 - 4 * c1).clamp(min=0))) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + torch.sqrt((b2**2 - 16 * c2).clamp(min=0))) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + torch.sqrt((b3**2 - 4 * a3 * c3).clamp(min=0))) / 2
    return torch.minimum(torch.minimum(r1, r2), r3).to(height.dtype)


def gaussian_heatmap(
    boxes_xywh_norm: torch.Tensor,
    size: int,
    min_overlap: float = 0.7,
    visible: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gaussian target heatmap (B, 1, size, size) for boxes (B, 4) normalized x, y, w, h on a ``size`` grid.

    Centre cell = round((x + w/2)·size), round((y + h/2)·size), clamped into the grid (so every visible sample has
    exactly one cell equal to 1); radius r = floor(gaussian_radius(h·size, w·size)), σ = (2r + 1)/6, values outside
    the (2r + 1)² square are 0. Rows with ``visible`` False are all zero.

    Example:
        >>> hm = gaussian_heatmap(torch.tensor([[0.25, 0.25, 0.5, 0.5]]), 16)
        >>> hm.shape, hm[0, 0, 8, 8].item()
        (torch.Size([1, 1, 16, 16]), 1.0)
    """
    if boxes_xywh_norm.ndim != 2 or boxes_xywh_norm.shape[-1] != 4:
        raise ValueError(f"boxes_xywh_norm must have shape (B, 4), got {tuple(boxes_xywh_norm.shape)}")
    boxes = boxes_xywh_norm.detach().float() * size
    w, h = boxes[:, 2].clamp(min=0), boxes[:, 3].clamp(min=0)
    cx = torch.round(boxes[:, 0] + w / 2).clamp(0, size - 1)
    cy = torch.round(boxes[:, 1] + h / 2).clamp(0, size - 1)
    radius = torch.floor(gaussian_radius(h, w, min_overlap)).clamp(min=0)
    sigma = (2 * radius + 1) / 6
    grid = torch.arange(size, device=boxes.device, dtype=boxes.dtype)
    dx = grid.view(1, 1, size) - cx.view(-1, 1, 1)  # (B, 1, S) over columns
    dy = grid.view(1, size, 1) - cy.view(-1, 1, 1)  # (B, S, 1) over rows
    r = radius.view(-1, 1, 1)
    heat = torch.exp(-(dx**2 + dy**2) / (2 * sigma.view(-1, 1, 1) ** 2))
    heat = heat * ((dx.abs() <= r) & (dy.abs() <= r))
    if visible is not None:
        heat = heat * visible.to(heat.device, heat.dtype).view(-1, 1, 1)
    return heat.unsqueeze(1)


def focal_loss(
    pred: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0, eps: float = 1e-6
) -> torch.Tensor:
    """CornerNet/CenterNet focal loss, summed and divided by the number of positives (cells with target == 1).

    pos: -log(p)(1-p)^α; neg: -log(1-p) p^α (1-y)^β. With no positive cell the sum is divided by 1.
    """
    pred = pred.float().clamp(eps, 1 - eps)
    target = target.to(pred.dtype)
    pos = target.eq(1).to(pred.dtype)
    neg = 1 - pos
    pos_loss = torch.log(pred) * (1 - pred) ** alpha * pos
    neg_loss = torch.log(1 - pred) * pred**alpha * (1 - target) ** beta * neg
    num_pos = pos.sum().clamp(min=1)
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos


def generalized_box_iou(
    boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise-aligned GIoU and IoU of (N, 4) x1y1x2y2 boxes -> two (N,) tensors."""
    lt = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    rb = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(-1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(-1)
    union = area1 + area2 - inter
    iou = inter / (union + eps)
    enc = (torch.maximum(boxes1[:, 2:], boxes2[:, 2:]) - torch.minimum(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    enc_area = enc.prod(-1)
    giou = iou - (enc_area - union) / (enc_area + eps)
    return giou, iou


def giou_loss(pred_xyxy: torch.Tensor, target_xyxy: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """1 - GIoU for aligned (N, 4) x1y1x2y2 boxes; ``reduction`` in {"mean", "sum", "none"}.

    Example:
        >>> b = torch.tensor([[0.1, 0.1, 0.5, 0.5]])
        >>> giou_loss(b, b).item() < 1e-6
        True
    """
    giou, _ = generalized_box_iou(pred_xyxy, target_xyxy)
    return _reduce(1 - giou, reduction)


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _get(outputs: Any, key: str) -> torch.Tensor:
    value = outputs[key] if isinstance(outputs, Mapping) else getattr(outputs, key, None)
    if value is None:
        raise ValueError(f"outputs must provide {key!r}")
    return value


def tracking_loss(
    outputs: Any,
    search_box_xywh_norm: torch.Tensor,
    weights: Mapping[str, float] | None = None,
    visible: torch.Tensor | None = None,
    min_overlap: float = 0.7,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """OSTrack loss ``focal·w_f + giou·w_g + l1·w_l`` (defaults 1, 2, 5).

    Args:
        outputs: mapping/object with ``score_map`` (B, 1, Fs, Fs) and ``pred_boxes`` (B, 4) normalized cx, cy, w, h.
        search_box_xywh_norm: ground truth (B, 4), normalized x, y, w, h (top-left) in search-crop coordinates.
        weights: optional overrides of ``{"focal", "giou", "l1"}``.
        visible: optional (B,) bool; absent samples get an all-zero heatmap (their scores are pushed down) and are
            left out of the GIoU/L1 means (which are 0 when no sample is visible).

    Returns:
        ``(loss, components)``; components are detached scalars ``focal``, ``giou``, ``l1`` (unweighted) and the
        mean ``iou`` of the visible samples.
    """
    w = dict(DEFAULT_LOSS_WEIGHTS)
    if weights is not None:
        unknown = sorted(set(weights) - set(w))
        if unknown:
            raise ValueError(f"weights has unknown keys {unknown}; expected a subset of {sorted(w)}")
        w.update({k: float(v) for k, v in weights.items()})
    score = _get(outputs, "score_map")
    pred_boxes = _get(outputs, "pred_boxes")
    gt = search_box_xywh_norm.to(device=pred_boxes.device, dtype=torch.float32)
    if gt.ndim != 2 or gt.shape != (pred_boxes.shape[0], 4):
        raise ValueError(f"search_box must have shape ({pred_boxes.shape[0]}, 4), got {tuple(gt.shape)}")
    if visible is not None:
        visible = visible.to(device=pred_boxes.device, dtype=torch.bool).view(-1)

    heat = gaussian_heatmap(gt, score.shape[-1], min_overlap=min_overlap, visible=visible)
    focal = focal_loss(score, heat)

    pred_xyxy = box_cxcywh_to_xyxy(pred_boxes.float())
    gt_xyxy = box_xywh_to_xyxy(gt).clamp(0.0, 1.0)
    giou, iou = generalized_box_iou(pred_xyxy, gt_xyxy)
    l1 = (pred_xyxy - gt_xyxy).abs().mean(dim=-1)
    if visible is None:
        giou_l, l1_l, iou_m = (1 - giou).mean(), l1.mean(), iou.detach().mean()
    else:
        m = visible.to(giou.dtype)
        n = m.sum().clamp(min=1)
        giou_l, l1_l, iou_m = ((1 - giou) * m).sum() / n, (l1 * m).sum() / n, (iou.detach() * m).sum() / n
    loss = w["focal"] * focal + w["giou"] * giou_l + w["l1"] * l1_l
    components = {"focal": focal.detach(), "giou": giou_l.detach(), "l1": l1_l.detach(), "iou": iou_m}
    return loss, components
