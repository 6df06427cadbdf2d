"""Fine-tune an RGB-pretrained tracker on RGB-T (thermal) data with SRFT (or a baseline) and evaluate it.

With no arguments it runs the CPU demo end to end: the demo data v2 RGB-T set (rendered in the LasHeR layout
on first use: 8 train, 24 val, 80 test sequences) and the RGB set are built if absent, the demo RGB tracker shipped
with the package is loaded (nothing is trained), the prior significance is estimated on RGB pairs, the dual-stream
model is fine-tuned with SRFT and evaluated on the test set and on the RGB retention set; the metrics are printed
and the plots written to outputs/finetune_rgbt/plots.

    python examples/finetune_rgbt.py                                   # the demo
    python examples/finetune_rgbt.py --method full --steps 300         # a baseline: full / prompt / lora / ewc / ...
    python examples/finetune_rgbt.py --method full --eval-every 10 --early-stopping   # full + early stop (val split)
    accelerate launch examples/finetune_rgbt.py --mixed-precision bf16  # accelerate (set up with accelerate config)
    accelerate launch --multi_gpu --num_processes 2 examples/finetune_rgbt.py   # 2 processes (gloo on CPU)
    python examples/finetune_rgbt.py --resume                          # continue from output_dir/checkpoints
    python examples/finetune_rgbt.py --data-root /data/LasHeR --pretrained OSTrack_ep0300.pth.tar --preset ostrack256-ce

All flags: --help. The code is srft_peft.tracking.train (finetune_rgbx); see docs/tracking.md.
"""

from srft_peft.tracking.train import finetune_main

if __name__ == "__main__":
    finetune_main("rgbt", description=__doc__.splitlines()[0])
