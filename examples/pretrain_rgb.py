"""Pretrain a small RGB tracker of your own (the "RGB pretraining" stage), to fine-tune instead of the shipped one.

The fine-tuning examples start from the demo RGB tracker shipped with the package (load_demo_rgb_tracker); nothing
needs to be trained. It was made, and is re-made, by scripts/pretrain_demo_tracker.py (recipe chosen on the demo RGB
set's val split, scored once on retention, written as a checksummed fp16 asset). This script re-trains one:

    python examples/pretrain_rgb.py                         # cached in ~/.cache/srft_peft/pretrained (ensure_pretrained_rgb)
    python examples/pretrain_rgb.py --output-dir outputs/rgb_tracker --steps 2000
    python examples/pretrain_rgb.py --data-root /data/GOT10k_rgb_layout --dataset rgb --output-dir outputs/rgb_got

Without --output-dir the tracker goes to the cache (ensure_pretrained_rgb: ~/.cache/srft_peft/pretrained, or
$SRFT_CACHE_DIR). Pass the printed folder to the fine-tuning examples as --pretrained. Training data default: the
pretrain split of the demo RGB set (demo data v2, rendered on first use), where the shipped tracker was trained.
"""

import argparse
import dataclasses

from srft_peft.tracking import TrackerConfig, load_tracker
from srft_peft.tracking.train import PretrainConfig, ensure_pretrained_rgb, pretrain_rgb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output-dir", default=None, help="Where to save the tracker; default: the cache.")
    parser.add_argument("--data-root", default=None, help="RGB sequences (default: the demo RGB set).")
    parser.add_argument("--dataset", default="rgb", help="Loader of --data-root (rgb = <seq>/img + groundtruth.txt).")
    parser.add_argument("--variant", default="tiny", choices=("tiny", "small", "base"))
    parser.add_argument("--template-size", type=int, default=32)
    parser.add_argument("--search-size", type=int, default=64)
    defaults = PretrainConfig()
    for f in dataclasses.fields(PretrainConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                            default=getattr(defaults, f.name), help=f.metadata.get("help", ""))
    args = parser.parse_args()
    config = TrackerConfig(variant=args.variant, mode="rgb", template_size=args.template_size,
                           search_size=args.search_size)
    recipe = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)})
    if args.output_dir is None:
        if args.data_root is not None:
            parser.error("--data-root needs --output-dir (the cache holds only the demo tracker)")
        folder = ensure_pretrained_rgb(config=config, recipe=recipe)
    else:
        folder = pretrain_rgb(config, args.data_root, args.output_dir, recipe, dataset=args.dataset)
    model = load_tracker(folder)
    print(f"RGB tracker: {folder}\n{model.count_parameters()}")


if __name__ == "__main__":
    main()
