"""Two-process scenarios, run by test_integ_accelerate.py as ``torchrun --standalone --nproc_per_node 2 <this> OUT``.

Every rank writes what it ends with to OUT; the test compares ranks with each other and with one process.
"""

from __future__ import annotations

import sys

import torch
from _integ_common import calibration_batches, engine_state, flat_params, make_hf_srft, srft_config, tiny_hf_vit
from _integ_common import train_accelerate as train
from accelerate import Accelerator

from srft_peft import get_srft_model
from srft_peft.regularizer.prior_term import PriorTerm

STEPS, GLOBAL_BATCH = 6, 8
#: scenario -> (apply, SRFTConfig overrides); the decoupled lambda keeps lr * lambda * omega below 1 at lr 1e-2
SCENARIOS = {"grad": ("grad", {}), "loss": ("loss", {}),
             "decoupled": ("grad", {"prior_application": "decoupled", "lambda_prior": 0.5}),
             "proximal": ("grad", {"prior_application": "proximal"})}


def main(out: str) -> None:
    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    assert world == 2 and torch.distributed.is_initialized(), (world, torch.distributed.is_initialized())
    shard = calibration_batches()[rank::world]

    # (5) the prior from two shards (the sums are all-reduced once inside estimate_prior)
    srft = make_hf_srft(estimate=False)
    prior = srft.estimate_prior(shard, progress=False)
    torch.save(prior.to_state(), f"{out}/prior_rank{rank}.pt")

    # (1) DDP training in both apply modes and the post-step prior applications: each rank half of every global batch
    for scenario, (apply, overrides) in SCENARIOS.items():
        srft = make_hf_srft(apply, estimate=False, total_steps=STEPS, **overrides)
        srft.estimate_prior(shard, progress=False)
        model, _, _ = train(accelerator, srft, STEPS, GLOBAL_BATCH, micro=GLOBAL_BATCH // world)
        assert isinstance(model, torch.nn.parallel.DistributedDataParallel), type(model)
        torch.save({"params": flat_params(srft), **engine_state(srft)}, f"{out}/{scenario}_rank{rank}.pt")

    # SRFT state is not a module buffer: DDP (broadcast_buffers=True) must leave a rank-local change alone
    srft_buffers = len(list(model.module.buffers())) - len(list(model.module.base_model.buffers()))
    keys_ok = list(model.module.state_dict()) == list(model.module.base_model.state_dict())  # the model only
    marker = float(rank + 1)
    state = srft.srft_state_dict()
    state["tensors"]["transfer.v"][0] = marker
    srft.load_srft_state_dict(state)
    model(**calibration_batches(1)[0])  # a DDP forward: broadcasts rank 0's buffers to rank 1
    kept = float(srft.srft_state_dict()["tensors"]["transfer.v"][0]) == marker
    torch.save({"srft_buffers": srft_buffers, "state_dict_keys_ok": keys_ok,
                "marker_kept": kept, "broadcast_buffers": model.broadcast_buffers},
               f"{out}/buffers_rank{rank}.pt")

    # prepare_srft makes the state identical: here the ranks start from different weights (rank-dependent seed), so
    # their anchors differ until prepare (DDP broadcasts rank 0's weights, prepare_srft rank 0's SRFT state)
    srft = get_srft_model(tiny_hf_vit(seed=10 + rank), srft_config(total_steps=STEPS))
    srft.estimate_prior(shard, progress=False)
    before = engine_state(srft)
    train(accelerator, srft, STEPS, GLOBAL_BATCH, micro=GLOBAL_BATCH // world, stop_after=0)
    fresh = PriorTerm([t.param for t in srft.regularized_targets], srft.regularized_parameters,
                      srft.prior).state_tensors()
    torch.save({"before": before, "after": engine_state(srft), "fresh": fresh, "params": flat_params(srft)},
               f"{out}/sync_rank{rank}.pt")
    # leave together and close the gloo group: a process exiting while its peer's gloo threads still run can abort
    # ("terminate called without an active exception") on a loaded machine
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
