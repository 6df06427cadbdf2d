"""Worker of test_distributed_eval.py (run under torchrun): a fine-tune whose first validation pass is held back on
rank 0 for longer than the training process group's timeout.

    python -m torch.distributed.run --standalone --nproc_per_node 2 _slow_validation_worker.py CONFIG.json TIMEOUT_S DELAY_S
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta

from accelerate import Accelerator, InitProcessGroupKwargs

from srft_peft.tracking.train import FinetuneConfig, finetune_rgbx
from srft_peft.tracking.train import evaluate as evaluate_module


def main() -> None:
    config, timeout_s, delay_s = json.loads(open(sys.argv[1]).read()), float(sys.argv[2]), float(sys.argv[3])
    accelerator = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))])
    run_tracker = evaluate_module.run_tracker
    calls = []

    def slow_first_pass(*args, **kwargs):
        if accelerator.process_index == 0 and not calls:
            time.sleep(delay_s)  # rank 0's share of the step-0 validation takes longer than the timeout
        calls.append(1)
        return run_tracker(*args, **kwargs)

    evaluate_module.run_tracker = slow_first_pass
    results = finetune_rgbx(FinetuneConfig(**config), accelerator=accelerator)
    print(f"rank {accelerator.process_index} done, results: {bool(results)}", flush=True)


if __name__ == "__main__":
    main()
