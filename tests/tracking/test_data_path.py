"""The fine-tune's DataLoader settings and its checkpoint rule (steps, minutes, the same step on every process)."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from srft_peft.tracking.train import FinetuneConfig
from srft_peft.tracking.train.checkpoints import CheckpointRule
from srft_peft.tracking.train.data import default_num_workers, make_loader


def test_default_workers_follow_cpus_processes_and_device():
    assert default_num_workers("cuda", local_processes=1, cpus=16) == 8  # capped
    assert default_num_workers("cuda", local_processes=8, cpus=16) == 2
    assert default_num_workers("cuda", local_processes=4, cpus=2) == 0
    assert default_num_workers("cpu", local_processes=1, cpus=16) == 0


def test_loader_settings():
    data = list(range(8))
    auto = make_loader(data, FinetuneConfig(batch_size=2, num_workers=None), "cuda", list, local_processes=16)
    assert auto.num_workers == 0 or os.cpu_count() >= 16
    loader = make_loader(data, FinetuneConfig(batch_size=2, num_workers=2, prefetch_factor=3), "cuda", list,
                         drop_last=True)
    assert (loader.num_workers, loader.persistent_workers, loader.prefetch_factor, loader.pin_memory) == (2, True, 3, True)
    assert loader.drop_last and loader.batch_size == 2
    plain = make_loader(data, FinetuneConfig(batch_size=4, num_workers=0), "cpu", list)
    assert (plain.num_workers, plain.persistent_workers, plain.pin_memory) == (0, False, False)
    assert list(plain) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # dataset order


@pytest.mark.parametrize(("fields", "message"), [
    ({"num_workers": -1}, "num_workers must be a non-negative integer or None"),
    ({"prefetch_factor": 0}, "prefetch_factor must be a positive integer, got 0"),
    ({"save_every_minutes": float("nan")}, "save_every_minutes must be a finite number >= 0, got nan"),
    ({"save_every_minutes": -1}, "save_every_minutes must be a finite number >= 0, got -1"),
])
def test_bad_data_and_checkpoint_fields_name_field_and_value(fields, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**fields)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_checkpoint_rule_by_steps_minutes_and_last_step():
    assert [s for s in range(1, 11) if CheckpointRule(0, 0, 10).due(s)] == []  # both rules off: never
    steps = CheckpointRule(4, 0, 10)
    assert [s for s in range(1, 11) if steps.due(s)] == [4, 8, 10]
    clock = FakeClock()
    minutes = CheckpointRule(0, 1.0, 100, check_every=5, clock=clock)
    saved = []
    for step in range(1, 101):
        clock.now += 7.0  # 7 s per step: a minute has passed after 9 steps, seen at the next check step
        if minutes.due(step):
            saved.append(step)
    assert saved == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    clock.now = 0.0
    slow = CheckpointRule(0, 1.0, 100, check_every=5, clock=clock)
    saved = []
    for step in range(1, 101):
        clock.now += 13.0  # 13 s per step: due after 5 steps (65 s), then the clock restarts from that save
        if slow.due(step):
            saved.append(step)
    assert saved[:3] == [5, 10, 15] and saved[-1] == 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_saves(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        rule = CheckpointRule(0, 0.3 / 60, 40, check_every=4)  # 0.3 s; rank 1 steps 4x slower than rank 0
        saved = []
        for step in range(1, 41):
            time.sleep(0.005 if rank == 0 else 0.02)
            if rule.due(step):
                saved.append(step)
        out[rank] = saved
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_time_rule_saves_at_the_same_step_on_both_ranks():
    """Two gloo processes, one four times slower: alone, rank 1 would reach 0.3 s every ~16 steps and rank 0 every
    ~60 (never before the last step); the rule's all-reduce makes both save at the same steps."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank_saves, args=(_free_port(), out), nprocs=2, join=True)
        saved = dict(out)
    assert saved[0] == saved[1], saved
    assert len(saved[0]) >= 2 and saved[0][-1] == 40  # the slow rank's clock forced saves before the last step
