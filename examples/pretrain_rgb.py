"""Pretrain the small RGB tracker that the fine-tuning examples start from (the "RGB pretraining" stage).

    python examples/pretrain_rgb.py                         # the cached demo tracker (what the examples use by default)
    python examples/pretrain_rgb.py --output-dir outputs/rgb_tracker --steps 2000
    python examples/pretrain_rgb.py --data-root /data/GOT10k_rgb_layout --dataset rgb --output-dir outputs/rgb_got

Without --output-dir the tracker goes to the cache (ensure_pretrained_rgb: ~/.cache/srft_peft/pretrained, or
$SRFT_CACHE_DIR) and is reused by `python examples/finetune_rgbt.py`. With it, pass the folder to the fine-tuning
examples as --pretrained. Training data default: the demo RGB set (rendered on first use).
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
