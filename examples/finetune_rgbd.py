"""Fine-tune an RGB-pretrained tracker on RGB-D (depth) data with SRFT (or a baseline) and evaluate it.

With no arguments it runs the CPU demo end to end: the demo data v2 RGB-D set (rendered in the DepthTrack layout
on first use: 8 train, 24 val, 80 test sequences) and the RGB set are built if absent, the demo RGB tracker shipped
with the package is loaded (nothing is trained), the prior significance is estimated on RGB pairs, the dual-stream
model is fine-tuned with SRFT and evaluated on the test set and on the RGB retention set; the metrics are printed
and the plots written to outputs/finetune_rgbd/plots.

    python examples/finetune_rgbd.py                                   # the demo
    python examples/finetune_rgbd.py --method full --steps 300         # a baseline: full / prompt / lora / ewc / ...
    accelerate launch examples/finetune_rgbd.py --mixed-precision bf16  # accelerate (set up with accelerate config)
    accelerate launch --multi_gpu --num_processes 2 examples/finetune_rgbd.py   # 2 processes (gloo on CPU)
    python examples/finetune_rgbd.py --resume                          # continue from output_dir/checkpoints
    python examples/finetune_rgbd.py --data-root /data/DepthTrack --pretrained OSTrack_ep0300.pth.tar --preset ostrack256-ce

All flags: --help. The code is srft_peft.tracking.train (finetune_rgbx); see docs/tracking.md.
"""

from srft_peft.tracking.train import finetune_main

if __name__ == "__main__":
    finetune_main("rgbd", description=__doc__.splitlines()[0])
