"""Evaluation and validation at scale: sequences shared over processes, the standalone evaluation command, a test
set chosen apart from the training set, validation taken out of the training set, toolkit file names, and a
two-process fine-tune whose validation on one rank outlasts the training process group's timeout."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from srft_peft.tracking import OSTrackRGBX, Sequence, load_results, load_tracker, result_prefix, save_tracker
from srft_peft.tracking.datasets import load_dataset
from srft_peft.tracking.demo_data import make_demo_dataset
from srft_peft.tracking.evaluate import main as evaluate_main
from srft_peft.tracking.train import FinetuneConfig, finetune_rgbx
from srft_peft.tracking.train.data import load_rgbx_splits, split_off_validation, truncate_sequence
from srft_peft.tracking.train.evaluate import Processes, evaluate_tracker, shard_sequences

from .conftest import REPO


def _seqs(lengths: list[int]) -> list[Sequence]:
    return [Sequence(f"s{i}", ["f"] * n, [], np.ones((n, 4)), modality="rgb") for i, n in enumerate(lengths)]


def test_shards_cover_every_sequence_once_and_balance_frames():
    seqs = _seqs([50, 7, 30, 30, 12, 5, 44, 3, 9])
    shards = [shard_sequences(seqs, 3, k) for k in range(3)]
    names = [s.name for shard in shards for s in shard]
    assert sorted(names) == sorted(s.name for s in seqs) and len(names) == len(seqs)
    loads = [sum(len(s) for s in shard) for shard in shards]
    assert max(loads) - min(loads) <= max(len(s) for s in seqs)  # greedy longest-first: off by one sequence at most
    assert loads == [64, 63, 63]
    for shard in shards:  # each shard keeps the order of the list
        assert [seqs.index(s) for s in shard] == sorted(seqs.index(s) for s in shard)
    assert shard_sequences(seqs, 1, 0) == seqs and shard_sequences(seqs[:1], 2, 1) == []
    with pytest.raises(ValueError, match="shard index"):
        shard_sequences(seqs, 2, 2)


def test_processes_without_a_group_refuse_to_exchange():
    """A closed (or hand-made) group of several processes has nothing to exchange on: a clear error, not a collective
    on the training's default group. The single process needs no group and closing it changes nothing."""
    one = Processes()
    one.close()
    assert one.all_gather("x") == ["x"] and one.is_main
    with pytest.raises(RuntimeError, match="rank 1 of 2 has no evaluation group"):
        Processes(rank=1, world_size=2).all_gather("x")


def test_validation_taken_out_of_the_training_set_is_deterministic():
    seqs = _seqs([4] * 10)
    rest, val = split_off_validation(seqs[::-1], 3)  # the input order does not matter
    assert [s.name for s in val] == ["s1", "s5", "s8"]
    assert {s.name for s in rest} | {s.name for s in val} == {s.name for s in seqs} and len(rest) == 7
    for bad in (0, 10):
        with pytest.raises(ValueError, match="val_from_train must be between 1 and 9"):
            split_off_validation(seqs, bad)


@pytest.mark.parametrize(("fields", "message"), [
    ({"val_from_train": 2, "val_root": "/v"}, "both choose the validation sequences"),
    ({"val_from_train": -1}, "val_from_train must be a non-negative integer, got -1"),
    ({"test_dataset": "depthtrack"}, "test_dataset 'depthtrack' is rgbd data but the run is rgbt"),
    ({"test_dataset": "nosuch"}, "unknown dataset 'nosuch'"),
])
def test_bad_evaluation_fields_name_field_and_value(fields, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**fields)


def test_train_and_test_datasets_are_chosen_independently(tiny_data):
    root = tiny_data["rgbt"]
    cfg = FinetuneConfig(data_root=str(root), test_dataset="rgbt234", test_root=str(root / "test"), val_from_train=1)
    splits = load_rgbx_splits(cfg)
    assert {s.dataset for s in splits.train} == {"lasher"} and {s.dataset for s in splits.test} == {"rgbt234"}
    assert len(splits.val) == 1 and len(splits.train) == 1  # the demo folder's 2 training sequences, one taken out
    assert splits.val[0].name not in {s.name for s in splits.train}


def test_rgbt234_results_carry_the_tracker_prefix(tiny_data, tmp_path):
    seqs = load_dataset("rgbt234", tiny_data["rgbt"] / "test")
    model = OSTrackRGBX.from_rgb(load_tracker(tiny_data["tracker"]), "dual_stream", fusion_init="identity")
    summary = evaluate_tracker(model, seqs, tmp_path / "mine", "cpu", progress=False)
    name = seqs[0].name
    assert result_prefix(seqs, "mine") == "mine_" and result_prefix(load_dataset("lasher", tiny_data["rgbt"] / "test"),
                                                                     "mine") == ""
    assert (tmp_path / "mine" / f"mine_{name}.txt").is_file() and not (tmp_path / "mine" / f"{name}.txt").exists()
    assert (tmp_path / "mine" / f"mine_{name}_confidence.value").is_file()
    back = load_results(tmp_path / "mine", seqs, prefix="mine_")
    assert back[name].boxes.shape == (len(seqs[0]), 4)
    assert {"MPR", "MSR"} <= set(summary)


def test_evaluate_command_rejects_a_folder_that_is_no_tracker(tmp_path, capsys):
    code = evaluate_main(["--model", str(tmp_path), "--dataset", "lasher", "--root", str(tmp_path)])
    assert code == 2 and "not a tracker folder" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.distributed
@pytest.mark.subprocess
def test_slow_validation_on_one_rank_neither_hangs_nor_changes_results(tiny_data, example_env, tmp_path,
                                                                        accelerate_state):
    """Two gloo processes whose training process group times out after 15 s; rank 0's share of the step-0 validation
    is held back 25 s. Before validation was shared, rank 1 went on to the first step's gradient all-reduce and
    timed out there. Now every rank validates its share and they meet on the evaluation group: the run finishes, its
    validation at step 0 equals the one-process run's, and its test and best-step validation scores equal a
    one-process evaluation of the weights it saved."""
    data = make_demo_dataset(tmp_path / "data", modality="rgbt", num_train=4, num_test=3, frames=8, seed=2)
    config = dict(method="full", data_root=str(data), pretrained=str(tiny_data["tracker"]), steps=2, batch_size=2,
                  eval_every=1, val_from_train=2, early_stopping=True, eval_frames=6, save_every=0,
                  save_every_minutes=0, report_to=None, progress=False, evaluate_rgb=False, num_workers=0, seed=1)
    two = tmp_path / "two"
    (tmp_path / "config.json").write_text(json.dumps({**config, "output_dir": str(two)}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "examples" / "_slow_validation_worker.py"), str(tmp_path / "config.json"), "15", "25"]
    proc = subprocess.run(cmd, cwd=REPO, env=example_env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "rank 0 done, results: True" in proc.stdout and "rank 1 done, results: False" in proc.stdout
    results = json.loads((two / "results.json").read_text())
    assert results["num_processes"] == 2 and results["validation"]["from_train"] == 2

    one = finetune_rgbx(FinetuneConfig(**config, output_dir=str(tmp_path / "one")))
    assert results["validation"]["history"][0] == one["validation"]["history"][0]  # step 0: the same weights
    assert (two / "val_sequences.txt").read_text() == (tmp_path / "one" / "val_sequences.txt").read_text()

    splits = load_rgbx_splits(FinetuneConfig(**config))
    assert [s.name for s in splits.val] == (two / "val_sequences.txt").read_text().split()
    val = [truncate_sequence(s, 6) for s in splits.val]
    test = [truncate_sequence(s, 6) for s in splits.test]
    model = load_tracker(two / "model")
    alone = evaluate_tracker(model, test, None, "cpu", progress=False)
    assert results["per_sequence"]["test"] == alone["per_sequence"]
    assert all(results["metrics"][k] == alone[k] for k in ("PR", "NPR", "SR"))
    best = next(e for e in results["validation"]["history"] if e["step"] == results["validation"]["best_step"])
    assert results["final_step"] == best["step"]
    best_alone = evaluate_tracker(load_tracker(two / "best_model"), val, None, "cpu", progress=False)
    assert all(best[k] == best_alone[k] for k in ("PR", "NPR", "SR"))
    save_tracker(model, tmp_path / "saved")  # the standalone command on the same model, two processes
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "srft_peft.tracking.evaluate", "--model", str(tmp_path / "saved"), "--dataset", "lasher",
           "--root", str(data), "--frames", "6", "--out", str(tmp_path / "eval"), "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, env=example_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    standalone = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert standalone["num_processes"] == 2 and standalone["per_sequence"] == alone["per_sequence"]
    assert sorted(p.name for p in (tmp_path / "eval" / "saved").glob("*.txt")) == sorted(f"{s.name}.txt" for s in test)


def test_evaluate_command_in_one_process_writes_what_evaluate_tracker_scores(tiny_data, tmp_path, accelerate_state,
                                                                             capsys):
    model = OSTrackRGBX.from_rgb(load_tracker(tiny_data["tracker"]), "dual_stream", fusion_init="identity")
    save_tracker(model, tmp_path / "model")
    code = evaluate_main(["--model", str(tmp_path / "model"), "--dataset", "rgbt234", "--root", str(tiny_data["rgbt"]),
                          "--frames", "5", "--out", str(tmp_path / "eval"), "--name", "mine", "--no-progress"])
    assert code == 0 and "mine on rgbt234 (1 sequences, 1 process(es))" in capsys.readouterr().out
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    seqs = [truncate_sequence(s, 5) for s in load_dataset("rgbt234", tiny_data["rgbt"] / "test")]
    alone = evaluate_tracker(model, seqs, None, "cpu", progress=False)
    assert results["per_sequence"] == alone["per_sequence"] and results["metrics"]["MSR"] == alone["MSR"]
    assert (tmp_path / "eval" / "mine" / f"mine_{seqs[0].name}.txt").is_file()
