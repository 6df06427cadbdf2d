"""A NEW process that resumes an accelerate run: ``python <this> CHECKPOINT OUT START STEPS``.

It builds the model from the same initial weights, does not estimate the prior (the saved SRFT state brings it), lets
``accelerator.load_state`` restore model, optimizer, scheduler and SRFT state, and trains steps START..STEPS-1.
"""

from __future__ import annotations

import sys

import torch
from _integ_common import RESUME_CONFIG, engine_state, flat_params, make_hf_srft
from _integ_common import train_accelerate as train
from accelerate import Accelerator


def main(checkpoint: str, out: str, start: int, steps: int) -> None:
    accelerator = Accelerator(cpu=True)
    srft = make_hf_srft(estimate=False, **RESUME_CONFIG)
    train(accelerator, srft, steps, 8, micro=8, start=start, scheduler="lambda",
          after_prepare=lambda *_: accelerator.load_state(checkpoint))
    torch.save({"params": flat_params(srft), **engine_state(srft)}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
