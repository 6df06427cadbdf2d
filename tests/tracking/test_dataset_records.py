"""One record per dataset: loader, metric protocol (with its source), modality and layout in one registry."""

from __future__ import annotations

import numpy as np
import pytest

from srft_peft.tracking import PROTOCOLS, Sequence, evaluate_results
from srft_peft.tracking.datasets import (
    DATASETS,
    MODALITIES,
    DatasetRecord,
    demo_datasets,
    get_dataset,
    load_lasher,
    register_dataset,
)
from srft_peft.tracking.demo_data import DEMO_LAYOUTS
from srft_peft.tracking.train.config import MODALITY_DATASETS


def test_every_record_has_a_protocol_with_its_source_and_a_known_modality():
    assert {"lasher", "rgbt234", "rgbt210", "gtot", "depthtrack", "vot-rgbd", "visevent", "fe108", "coesot",
            "rgb"} == set(DATASETS)
    for name, record in DATASETS.items():
        assert record.name == name and record.protocol in PROTOCOLS.values(), name
        assert record.protocol_source.strip() and record.modality in MODALITIES and record.layout, name
    # the three that used to fall back to "default" now state their own
    assert {n: DATASETS[n].protocol.name for n in ("fe108", "coesot", "rgbt210")} == {
        "fe108": "fe108", "coesot": "coesot", "rgbt210": "rgbt210"}


def test_the_old_lookups_are_derived_from_the_records():
    assert DEMO_LAYOUTS == demo_datasets() == {"rgbt": "lasher", "rgbd": "depthtrack", "rgbe": "visevent", "rgb": "rgb"}
    assert MODALITY_DATASETS == {"rgbt": "lasher", "rgbd": "depthtrack", "rgbe": "visevent"}
    assert get_dataset("VOT_RGBD").loader is DATASETS["depthtrack"].loader


def test_a_record_without_a_protocol_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match=r"dataset 'mine' has no metric protocol \(got None\)"):
        DatasetRecord("mine", load_lasher, None, "nowhere", "rgbt", "<seq>/...")
    with pytest.raises(ValueError, match=r"dataset 'mine' has no metric protocol \(got 'lasher'\)"):
        DatasetRecord("mine", load_lasher, "lasher", "LasHeR toolkit", "rgbt", "<seq>/...")
    with pytest.raises(ValueError, match="protocol_source must say where protocol 'lasher' comes from"):
        DatasetRecord("mine", load_lasher, PROTOCOLS["lasher"], " ", "rgbt", "<seq>/...")
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(DatasetRecord("lasher", load_lasher, PROTOCOLS["lasher"], "x", "rgbt", "y"))
    with pytest.raises(ValueError, match="already has its demo dataset"):
        register_dataset(DatasetRecord("mine", load_lasher, PROTOCOLS["lasher"], "x", "rgbt", "y", demo=True))
    assert "mine" not in DATASETS


def test_evaluate_results_uses_the_record_protocol_and_refuses_an_unregistered_dataset():
    gt = np.array([[5, 5, 10, 10]] * 2, float)
    pred = np.array([[35, 5, 10, 10], [5, 5, 10, 10]], float)  # frame 0 is 30 px off

    def seq(dataset):
        return Sequence("s", ["0.jpg", "1.jpg"], [], gt, modality="rgb", dataset=dataset)

    assert evaluate_results([seq("rgbt210")], {"s": pred})["PR"] == pytest.approx(0.5)  # frame 0 scored as written
    assert evaluate_results([seq("fe108")], {"s": pred})["PR"] == pytest.approx(1.0)  # frame 0 := ground truth
    assert evaluate_results([seq("")], {"s": pred})["protocol"] == "default"
    with pytest.raises(ValueError, match=r"unknown dataset 'nobench'; choose one of \["):
        evaluate_results([seq("nobench")], {"s": pred})
