"""Evaluation runner (result files in the toolkits' format), end-to-end scoring and the plots."""

from __future__ import annotations

import numpy as np
import pytest

from srft_peft.tracking.datasets import load_dataset
from srft_peft.tracking.demo_data import make_demo_dataset
from srft_peft.tracking.evaluation import load_results, run_tracker
from srft_peft.tracking.metrics import evaluate_results
from srft_peft.tracking.plots import plot_precision, plot_success, plot_summaries

SMALL = dict(num_train=1, num_test=2, frames=10, image_size=(64, 48), seed=1)


class OracleTracker:
    """Returns the ground truth (shifted by ``offset``) and records what it was given."""

    def __init__(self, seq_by_size, offset=0.0):
        self.gts = seq_by_size
        self.offset = offset
        self.calls = []

    def initialize(self, image, box_xywh):
        self.calls.append(("init", image.shape, box_xywh.tolist()))
        self.seq = self.gts.pop(0)
        self.i = self.seq.init_frame

    def track(self, image):
        self.i += 1
        self.calls.append(("track", image.shape))
        box = self.seq.gt[self.i]
        if not np.isfinite(box).all():
            return np.zeros(4), 0.1
        return box + np.array([self.offset, 0, 0, 0]), 0.9


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = make_demo_dataset(tmp_path_factory.mktemp("demo") / "rgbt", modality="rgbt", **SMALL)
    return load_dataset("lasher", root / "test")


def test_run_tracker_writes_toolkit_files_and_reads_them_back(demo, tmp_path):
    tracker = OracleTracker(list(demo))
    results = run_tracker(tracker, demo, results_dir=tmp_path / "res", progress=False)
    assert set(results) == {s.name for s in demo}
    seq = demo[0]
    boxes, conf, fps = results[seq.name]
    assert boxes.shape == (len(seq), 4) and conf.shape == (len(seq),) and fps > 0
    assert boxes[0].tolist() == seq.gt[0].tolist() and conf[0] == 1.0  # frame 0 recorded as the GT box
    assert tracker.calls[0] == ("init", (48, 64, 6), seq.gt[0].tolist())
    assert sum(c[0] == "track" for c in tracker.calls) == sum(len(s) - 1 for s in demo)
    lines = (tmp_path / "res" / f"{seq.name}.txt").read_text().splitlines()
    assert len(lines) == len(seq) and len(lines[1].split(",")) == 4
    assert (tmp_path / "res" / f"{seq.name}_confidence.value").is_file()
    loaded = load_results(tmp_path / "res", demo)
    np.testing.assert_allclose(loaded[seq.name].boxes, boxes, atol=1e-4)
    np.testing.assert_allclose(loaded[seq.name].confidences, conf, atol=1e-6)
    assert loaded[seq.name].fps > 0
    # An oracle is perfect under every protocol; a shifted oracle loses PR at 20 px but keeps it at 50 px.
    summary = evaluate_results(demo, loaded)
    assert summary["protocol"] == "lasher" and summary["PR"] == 1.0 and summary["SR"] > 0.9
    shifted = run_tracker(OracleTracker(list(demo), offset=25.0), demo, progress=False)
    worse = evaluate_results(demo, shifted, protocol="default")
    assert worse["PR"] < 0.5 and worse["precision_curve"][-1] == 1.0
    with pytest.raises(FileNotFoundError, match="no result file for sequence 'nope'"):
        load_results(tmp_path / "res", ["nope"])


def test_rgb_only_frames_and_reuse_of_existing_results(demo, tmp_path):
    tracker = OracleTracker(list(demo))
    run_tracker(tracker, demo[:1], results_dir=tmp_path, progress=False, rgb_only=True)
    assert tracker.calls[0][1] == (48, 64, 3)
    again = OracleTracker([])
    results = run_tracker(again, demo[:1], results_dir=tmp_path, progress=False, overwrite=False)
    assert again.calls == [] and results[demo[0].name].boxes.shape == (len(demo[0]), 4)


def test_tracker_errors_name_sequence_and_frame(demo):
    class Broken(OracleTracker):
        def track(self, image):
            if self.i == 2:
                raise RuntimeError("boom")
            return super().track(image)

    with pytest.raises(RuntimeError, match=rf"sequence '{demo[0].name}', frame 3: boom"):
        run_tracker(Broken(list(demo)), demo, progress=False)

    class BadShape(OracleTracker):
        def track(self, image):
            return np.zeros(5), 1.0

    with pytest.raises(ValueError, match=r"box of shape \(5,\)"):
        run_tracker(BadShape(list(demo)), demo, progress=False)


def test_progress_bars_show_sequences_and_frames_and_leave_results_unchanged(demo, capsys):
    shown = run_tracker(OracleTracker(list(demo)), demo, progress=True)
    err = capsys.readouterr().err
    assert "sequences" in err and f"{len(demo)}/{len(demo)}" in err  # the outer bar reached every sequence
    assert demo[0].name in err and "frame" in err  # the inner bar is named after the sequence
    quiet = run_tracker(OracleTracker(list(demo)), demo, progress=False)
    assert capsys.readouterr().err == ""
    for name, result in quiet.items():
        np.testing.assert_array_equal(shown[name].boxes, result.boxes)
        np.testing.assert_array_equal(shown[name].confidences, result.confidences)


def test_plots_write_pngs(demo, tmp_path):
    good = evaluate_results(demo, run_tracker(OracleTracker(list(demo)), demo, progress=False))
    bad = evaluate_results(demo, run_tracker(OracleTracker(list(demo), offset=15.0), demo, progress=False))
    for path in (
        plot_success({"oracle": good["success_curve"], "shifted": bad}, tmp_path / "s.png"),
        plot_precision(
            {"oracle": good, "shifted": (bad["precision_thresholds"], bad["precision_curve"])}, tmp_path / "p.png"
        ),
        *plot_summaries({"oracle": good, "shifted": bad}, tmp_path / "all").values(),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="pass \\(thresholds, curve\\)"):
        plot_success({"x": np.ones(5)}, tmp_path / "x.png")
