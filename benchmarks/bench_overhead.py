"""Step-time and memory overhead of SRFT against plain full fine-tuning, measured side by side in one run.

Every configuration trains its own copy of the same timm ViT with AdamW on the same random batches; steps are
interleaved round-robin (one step of each configuration per round) so that machine noise hits all of them alike.
Prints the median step time of each, its ratio to plain fine-tuning, and SRFT's persistent extra memory as a multiple
of the regularized parameters' bytes.

    python benchmarks/bench_overhead.py                     # ViT-S/16 at 224 px, batch 8 (CPU)
    python benchmarks/bench_overhead.py --model vit_base_patch16_224 --device cuda --batch 32 --dtype bf16
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import timm
import torch

from srft_peft import SRFTConfig, get_srft_model

CONFIGS = {
    "plain": None,
    "srft-grad": dict(apply="grad"),
    "srft-loss": dict(apply="loss"),
    "srft-grad-rank": dict(apply="grad", transfer_mode="rank"),
    "srft-grad-own-stats": dict(apply="grad", transfer_statistics="own"),
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(args: argparse.Namespace, name: str, base: torch.nn.Module, calib: list[torch.Tensor]):
    model = copy.deepcopy(base)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    srft = None
    if CONFIGS[name] is not None:
        cfg = SRFTConfig(prior_rank=args.rank, total_steps=2 * (args.steps + args.warmup),
                         **CONFIGS[name])
        srft = get_srft_model(model, cfg)
        srft.estimate_prior(calib, progress=False)
        srft.attach(opt)
        # start mid-schedule so that both the prior and the transfer term are active
        srft._engine.step = args.steps + args.warmup
    return model, srft, opt


def train_step(args, model, srft, opt, x, y) -> None:
    with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
        logits = (srft or model)(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
    if srft is not None and srft.srft_config.apply == "loss":
        loss = loss + srft.srft_loss()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()

    torch.manual_seed(0)
    base = timm.create_model(args.model, pretrained=False, num_classes=100, img_size=args.img_size).to(args.device)
    calib = [torch.randn(args.batch, 3, args.img_size, args.img_size, device=args.device) for _ in range(2)]
    runs = {name: build(args, name, base, calib) for name in args.configs}
    times: dict[str, list[float]] = {name: [] for name in runs}
    g = torch.Generator(device="cpu").manual_seed(1)
    for i in range(args.warmup + args.steps):
        x = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=g).to(args.device)
        y = torch.randint(0, 100, (args.batch,), generator=g).to(args.device)
        for name, (model, srft, opt) in runs.items():
            sync(args.device)
            t0 = time.perf_counter()
            train_step(args, model, srft, opt, x, y)
            sync(args.device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"model {args.model} @ {args.img_size}px, batch {args.batch}, {args.dtype}, device {args.device} "
          f"({device_name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, prior_rank {args.rank}")
    plain = statistics.median(times["plain"]) if "plain" in times else None
    print(f"{'config':<22}{'median step (ms)':>18}{'ratio vs plain':>16}{'extra memory (x reg. params)':>31}")
    for name, (_model, srft, _opt) in runs.items():
        med = statistics.median(times[name])
        ratio = f"{med / plain:.3f}" if plain else "-"
        extra = "-"
        if srft is not None:
            mem = srft.memory_footprint()
            extra = f"{sum(v for k, v in mem.items() if k != 'parameters') / mem['parameters']:.3f}"
        print(f"{name:<22}{1000 * med:>18.1f}{ratio:>16}{extra:>31}")


if __name__ == "__main__":
    main()
