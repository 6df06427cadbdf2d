"""Step time and memory of SRFT against plain full fine-tuning and two baselines, measured side by side in one run.

Every configuration trains its own copy of the same timm ViT (AdamW, weight decay 0, cross-entropy on random labels)
on the same random batches. Steps are interleaved round-robin (one step of each configuration per round) so that
machine noise hits all of them alike. Configurations:

    plain                full fine-tuning, nothing else
    srft-grad            SRFT, apply="grad", transfer_mode="value", v = AdamW's exp_avg_sq (the defaults)
    srft-loss            the same with apply="loss" (lambda_p R_prior added to the loss, autograd differentiates it)
    srft-grad-rank       transfer_mode="rank" (a sort per tensor every rank_interval=10 steps)
    srft-grad-own        transfer_statistics="own" (SRFT keeps its own EMA of g^2)
    srft-grad-rank-own   rank mode with own statistics
    srft-decoupled       prior_application="decoupled" (the prior pull applied after the optimizer step)
    srft-proximal        prior_application="proximal" (the proximal shrink after the optimizer step)
    srft-grad-monitor    srft-grad with the balance monitor on (monitor_balance=True)
    ewc-loss             BASELINE: EWC written as a Python loop adding (F * (p - p0)**2).sum() per tensor to the loss
    authors-step         BASELINE: the SRFT authors' released step (argsort of every tensor after every step)

The baselines live in ``benchmarks/baselines.py`` and regularize the same parameters as SRFT (the backbone without the
head). SRFT starts mid-schedule (kappa = 0.5) so that the prior and the transfer term both run every step.

Per configuration the table shows:
    step ms      median wall time of forward + backward + optimizer.step (+ hooks) + zero_grad
    x plain      its ratio to the plain median
    x paired     1 + (reg ms/pair) / (plain median): the same ratio from paired differences, steadier under load
    x range      the smallest and largest per-round ratio (this step / the plain step of the same round): the spread
    reg ms/hook  median time spent in the optimizer-step hooks (timed directly with perf_counter by hooks registered
                 before and after the configuration's own; device-synchronized on CUDA): the per-step regularizer work
                 of srft-grad* and authors-step. Loss-mode work happens inside forward/backward and shows here as 0.
    hook mean    their mean (the amortized cost of rank mode, whose sort runs every rank_interval steps)
    reg ms/pair  median over rounds of (this step - plain step in the same round): the regularizer cost by difference
    extra mem    persistent extra memory as a multiple of the regularized parameters' bytes (SRFT:
                 ``srft.memory_footprint()``; baselines: their tensors), with SRFT's breakdown
    peak delta   (--memory) peak memory minus the plain configuration's, each configuration in its own process:
                 CPU peak RSS (``resource.getrusage``), CUDA ``torch.cuda.max_memory_allocated``

The per-step cost depends only on the shapes of the prior (k_out x k_in per matrix, which tensors are diagonal), so by
default the prior is synthetic (random orthonormal U, V, positive omega, positive Fisher) of exactly the shapes that
``estimate_prior`` with ``prior_rank`` gives; ``--prior estimate`` runs the real calibration (minutes for ViT-B on a
CPU: float64 eigendecompositions; cache it with ``--prior-dir``).

    # validation on a small, loaded CPU (seconds to minutes)
    OMP_NUM_THREADS=1 python benchmarks/bench_overhead.py --model vit-s --img-size 64 --steps 4 --threads 1
    # the reported CPU figures (one thread; interleaved; peak RSS per configuration in its own process)
    OMP_NUM_THREADS=1 python benchmarks/bench_overhead.py --model vit-s --steps 6 --threads 1 --memory
    OMP_NUM_THREADS=1 python benchmarks/bench_overhead.py --model vit-b --steps 6 --threads 1 --memory
    # where the SRFT hook time goes (torch.profiler, CPU)
    OMP_NUM_THREADS=1 python benchmarks/bench_overhead.py --model vit-s --configs plain srft-grad --profile
    # GPU, ViT-B at an OSTrack-like size (256 px search region, 257 tokens; OSTrack adds 64 template tokens), batch 32
    python benchmarks/bench_overhead.py --model vit-b --img-size 256 --batch 32 --device cuda --dtype bf16 --memory
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import timm
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if (HERE.parent / "srft_peft").is_dir():  # run from a checkout: benchmark this checkout's library, not an installed one
    sys.path.insert(0, str(HERE.parent))
from baselines import AuthorsStep, EWCLoss  # noqa: E402

import srft_peft.regularizer.engine as srft_engine  # noqa: E402
from srft_peft import SRFTConfig, SRFTModel, get_srft_model  # noqa: E402
from srft_peft.checkpoint import load_significance_checkpoint  # noqa: E402
from srft_peft.regularizer import PriorTerm, TransferTerm  # noqa: E402
from srft_peft.regularizer.lora_term import CombinedPriorTerm  # noqa: E402
from srft_peft.significance import DiagonalSignificance, KFACSignificance, PriorSignificance  # noqa: E402
from srft_peft.targeting import select_targets  # noqa: E402

MODELS = {"vit-s": "vit_small_patch16_224", "vit-b": "vit_base_patch16_224"}
SRFT = dict(total_steps=1_000_000, transfer_statistics="optimizer")
CONFIGS: dict[str, Optional[dict[str, Any]]] = {
    "plain": None,
    "srft-grad": dict(apply="grad"),
    "srft-loss": dict(apply="loss"),
    "srft-grad-rank": dict(apply="grad", transfer_mode="rank"),
    "srft-grad-own": dict(apply="grad", transfer_statistics="own"),
    "srft-grad-rank-own": dict(apply="grad", transfer_mode="rank", transfer_statistics="own"),
    "srft-decoupled": dict(apply="grad", prior_application="decoupled"),
    "srft-proximal": dict(apply="grad", prior_application="proximal"),
    "srft-grad-monitor": dict(apply="grad", monitor_balance=True),
    "ewc-loss": None,
    "authors-step": None,
}
DEFAULT_CONFIGS = ["plain", "srft-grad", "srft-loss", "srft-grad-rank", "srft-grad-own", "ewc-loss", "authors-step"]
HOOK_LABELS = ("PriorTerm.gradient_into_", "TransferTerm.damping_into_", "TransferTerm.apply_", "ema_update_")


# --- set-up -----------------------------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def create_model(args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(MODELS.get(args.model, args.model), pretrained=False, num_classes=100,
                             img_size=args.img_size).to(args.device)


def synthetic_priors(model: torch.nn.Module, rank: int) -> tuple[PriorSignificance, PriorSignificance]:
    """(K-FAC prior, diagonal prior) with the shapes estimate_prior(prior_rank=rank) gives, random values."""
    g = torch.Generator().manual_seed(0)
    kfac, diag = {}, {}
    for t in select_targets(model, None, None, "kfac"):
        diag[t.name] = DiagonalSignificance(t.name, torch.rand(t.param.shape, generator=g) + 0.1)
        if t.kind == "kfac":
            m, n = t.matrix_shape
            U = torch.linalg.qr(torch.randn(m, min(rank, m), generator=g))[0]
            V = torch.linalg.qr(torch.randn(n, min(rank, n), generator=g))[0]
            omega = torch.rand(U.shape[1], V.shape[1], generator=g) + 0.1
            kfac[t.name] = KFACSignificance(t.name, U.contiguous(), V.contiguous(), omega)
        else:
            kfac[t.name] = diag[t.name]
    return PriorSignificance(kfac).normalize(), PriorSignificance(diag).normalize()


def prior_folder(args: argparse.Namespace) -> Path:
    return Path(args.prior_dir) / f"{MODELS.get(args.model, args.model)}-{args.img_size}px-r{args.rank}"


def estimated_priors(args: argparse.Namespace, base: torch.nn.Module) -> tuple[PriorSignificance, PriorSignificance]:
    """The real K-FAC and diagonal priors on random calibration images, read from / written to ``--prior-dir``."""
    folder = prior_folder(args)
    priors = []
    for estimator in ("kfac", "diagonal"):
        where = folder / estimator
        if not (where / "srft_config.json").exists():
            srft = get_srft_model(copy.deepcopy(base), SRFTConfig(prior_rank=args.rank, prior_estimator=estimator))
            g = torch.Generator().manual_seed(2)
            calib = [torch.randn(args.batch, 3, args.img_size, args.img_size, generator=g).to(args.device)
                     for _ in range(args.calib_batches)]
            t0 = time.perf_counter()
            srft.estimate_prior(calib, progress=False)
            print(f"# estimated the {estimator} prior in {time.perf_counter() - t0:.1f} s -> {where}", flush=True)
            srft.save_pretrained(where)
        priors.append(load_significance_checkpoint(where).prior)
    return priors[0], priors[1]


@dataclass
class Run:
    """One configuration: its model copy, optimizer, regularizer and timings."""

    name: str
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    srft: Optional[SRFTModel] = None
    ewc: Optional[EWCLoss] = None
    authors: Optional[AuthorsStep] = None
    times: list[float] = field(default_factory=list)
    hook_times: list[float] = field(default_factory=list)
    _hook_acc: float = 0.0
    _t: float = 0.0

    def extra_memory(self) -> tuple[Optional[float], str]:
        params = sum(p.numel() * p.element_size() for p in regularized(self.model))
        if self.srft is not None:
            mem = self.srft.memory_footprint()
            parts = {k: v / mem["parameters"] for k, v in mem.items() if k != "parameters"}
            return sum(parts.values()), " ".join(f"{k} {v:.2f}" for k, v in parts.items() if v)
        if self.ewc is not None:
            return self.ewc.memory_bytes() / params, "F 1.00 p0 1.00"
        if self.authors is not None:
            return self.authors.memory_bytes() / params, "p_prev 1.00 g2_prev 1.00"
        return None, ""


def regularized(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [t.param for t in select_targets(model, None, None)]


def add_hook_timers(run: Run, device: str, attach) -> None:
    """Register timing hooks around the configuration's own step hooks (pre: before/after it; post: before/after it)
    and, while profiling, ``record_function`` ranges named after the hooks."""
    ranges: dict[str, Any] = {}

    def start(label: str):
        def hook(*_: Any) -> None:
            sync(device)
            run._t = time.perf_counter()
            if torch.autograd._profiler_enabled():
                ranges[label] = torch.autograd.profiler.record_function(label)
                ranges[label].__enter__()
        return hook

    def stop(label: str):
        def hook(*_: Any) -> None:
            if label in ranges:
                ranges.pop(label).__exit__(None, None, None)
            sync(device)
            run._hook_acc += time.perf_counter() - run._t
        return hook

    run.opt.register_step_pre_hook(start("hook.before_step"))
    run.opt.register_step_post_hook(start("hook.after_step"))
    attach()
    run.opt.register_step_pre_hook(stop("hook.before_step"))
    run.opt.register_step_post_hook(stop("hook.after_step"))


def build(args: argparse.Namespace, name: str, base: torch.nn.Module,
          priors: tuple[PriorSignificance, PriorSignificance]) -> Run:
    model = copy.deepcopy(base)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    run = Run(name, model, opt)
    attach = lambda: None  # noqa: E731
    if CONFIGS[name] is not None:
        run.srft = get_srft_model(model, SRFTConfig(prior_rank=args.rank, **{**SRFT, **CONFIGS[name]}))
        run.srft.set_prior(priors[0])
        run.srft.step = SRFT["total_steps"] // 2  # mid-schedule: kappa = 0.5, both terms active

        def attach() -> None:
            run.srft.attach(opt)
    elif name == "ewc-loss":
        named = dict(model.named_parameters())
        names = [t.name for t in select_targets(model, None, None)]
        run.ewc = EWCLoss([named[n] for n in names], [priors[1].entries[n].fisher for n in names], lam=0.5)
    elif name == "authors-step":
        run.authors = AuthorsStep(regularized(model))
        attach = lambda: run.authors.attach(opt)  # noqa: E731
    add_hook_timers(run, args.device, attach)
    return run


def train_step(args: argparse.Namespace, run: Run, x: torch.Tensor, y: torch.Tensor) -> None:
    with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
        logits = (run.srft or run.model)(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
    if run.srft is not None and run.srft.srft_config.apply == "loss":
        loss = loss + run.srft.srft_loss()
    if run.ewc is not None:
        loss = loss + run.ewc()
    loss.backward()
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)


def batches(args: argparse.Namespace, count: int):
    g = torch.Generator(device="cpu").manual_seed(1)
    for _ in range(count):
        x = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=g).to(args.device)
        y = torch.randint(0, 100, (args.batch,), generator=g).to(args.device)
        yield x, y


def timed_step(args: argparse.Namespace, run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    run._hook_acc = 0.0
    sync(args.device)
    t0 = time.perf_counter()
    train_step(args, run, x, y)
    sync(args.device)
    return time.perf_counter() - t0, run._hook_acc


# --- profiling --------------------------------------------------------------------------------------------------------
def labelled(fn, label: str):
    def wrapper(*a: Any, **k: Any) -> Any:
        with torch.autograd.profiler.record_function(label):
            return fn(*a, **k)
    return wrapper


def profile_hooks(args: argparse.Namespace, runs: dict[str, Run], steps: int = 3) -> None:
    """torch.profiler over ``steps`` steps of every configuration with step hooks; self time of each op inside the hooks,
    attributed to the innermost SRFT function it ran in."""
    from torch.profiler import ProfilerActivity, profile

    patched = [(srft_engine, "ema_update_", "ema_update_"),
               (PriorTerm, "gradient_into_", "PriorTerm.gradient_into_"),
               (CombinedPriorTerm, "gradient_into_", "PriorTerm.gradient_into_"),
               (TransferTerm, "damping_into_", "TransferTerm.damping_into_"),
               (TransferTerm, "apply_", "TransferTerm.apply_")]
    originals = [getattr(owner, name) for owner, name, _ in patched]
    for (owner, name, label), fn in zip(patched, originals):  # the classes' methods: every engine's calls are labelled
        setattr(owner, name, labelled(fn, label))
    try:
        for run in runs.values():
            if run.srft is None and run.authors is None:
                continue
            data = list(batches(args, steps))
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for x, y in data:
                    train_step(args, run, x, y)
            report_profile(run.name, prof.events(), steps)
    finally:
        for (owner, name, _), fn in zip(patched, originals):
            setattr(owner, name, fn)


def report_profile(name: str, events: Any, steps: int) -> None:
    labels = set(HOOK_LABELS) | {"hook.before_step", "hook.after_step"}
    hook_total: dict[str, float] = defaultdict(float)
    by_op: dict[tuple[str, str], float] = defaultdict(float)
    for ev in events:
        if ev.name in labels and ev.name.startswith("hook."):
            hook_total[ev.name] += ev.cpu_time_total
        if ev.name in labels:
            continue
        chain, parent = [], ev.cpu_parent
        while parent is not None:
            if parent.name in labels:
                chain.append(parent.name)
            parent = parent.cpu_parent
        if not chain or not chain[-1].startswith("hook."):
            continue
        by_op[(chain[0], ev.name)] += ev.self_cpu_time_total
    total = sum(hook_total.values())
    print(f"\nprofile {name}: hook time {total / 1000 / steps:.1f} ms/step ("
          + ", ".join(f"{k} {v / 1000 / steps:.1f}" for k, v in sorted(hook_total.items())) + ")")
    print(f"  {'inside':<28}{'op':<34}{'ms/step':>9}{'share':>8}")
    for (where, op), us in sorted(by_op.items(), key=lambda kv: -kv[1])[:14]:
        print(f"  {where:<28}{op:<34}{us / 1000 / steps:>9.2f}{us / max(total, 1e-9):>8.1%}")


# --- memory: one process per configuration -----------------------------------------------------------------------
def child_main(args: argparse.Namespace) -> None:
    """Run one configuration for warm-up + steps and print its peak memory as JSON."""
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    base = create_model(args)
    priors = estimated_priors(args, base) if args.prior == "estimate" else synthetic_priors(base, args.rank)
    run = build(args, args.child, base, priors)
    del base
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for x, y in batches(args, args.warmup + args.steps):
        train_step(args, run, x, y)
    sync(args.device)
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    if not args.device.startswith("cuda") and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss <= start:
        print(f"warning: the peak RSS of {args.child} was inherited from the parent process", file=sys.stderr)
    print(json.dumps({"config": args.child, "peak": peak}))


def measure_peaks(args: argparse.Namespace, names: list[str]) -> dict[str, int]:
    peaks = {}
    for name in ["plain"] + [n for n in names if n != "plain"]:
        cmd = [sys.executable, __file__, "--child", name, "--model", args.model, "--img-size", str(args.img_size),
               "--batch", str(args.batch), "--steps", str(args.memory_steps), "--warmup", "1", "--rank", str(args.rank),
               "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads), "--prior", args.prior,
               "--prior-dir", args.prior_dir, "--calib-batches", str(args.calib_batches)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        sys.stderr.write("".join(line + "\n" for line in done.stderr.splitlines() if "warning" in line.lower()))
        peaks[name] = json.loads(done.stdout.strip().splitlines()[-1])["peak"]
    return peaks


# --- main -------------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit-s", help=f"timm model name or one of {list(MODELS)}")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10,
                        help="timed rounds (one step of every configuration each); a multiple of rank_interval=10 "
                        "makes the hook mean the exact amortized cost of rank mode")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rank", type=int, default=32, help="prior_rank")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: autocast forward/backward, fp32 weights, optimizer and SRFT state")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())),
                        help="torch.set_num_threads (default: $OMP_NUM_THREADS, else torch's default)")
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    parser.add_argument("--prior", choices=["synthetic", "estimate"], default="synthetic")
    parser.add_argument("--prior-dir", default=str(Path(tempfile.gettempdir()) / "srft_bench_priors"),
                        help="cache of estimated priors (--prior estimate)")
    parser.add_argument("--calib-batches", type=int, default=2, help="--prior estimate: calibration batches")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory, one process per config")
    parser.add_argument("--memory-steps", type=int, default=3, help="steps of each --memory process (after 1 warm-up)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler breakdown of the step-hook work")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child is not None:
        child_main(args)
        return

    names = ["plain"] + [n for n in args.configs if n != "plain"]
    if args.prior == "estimate":  # estimate (or find) the priors once, before the memory processes read them
        estimated_priors(args, create_model(args))
    # before this process grows: on Linux a child process starts with its parent's peak RSS
    peaks = measure_peaks(args, names) if args.memory else {}
    base = create_model(args)
    priors = estimated_priors(args, base) if args.prior == "estimate" else synthetic_priors(base, args.rank)
    runs = {name: build(args, name, base, priors) for name in names}
    reg_params = sum(p.numel() for p in regularized(base))
    for i, (x, y) in enumerate(batches(args, args.warmup + args.steps)):
        for run in runs.values():
            total, hooks = timed_step(args, run, x, y)
            if i >= args.warmup:
                run.times.append(total)
                run.hook_times.append(hooks)

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"# {datetime.date.today()}  model {MODELS.get(args.model, args.model)} @ {args.img_size}px, batch "
          f"{args.batch}, {args.dtype}, device {args.device} ({device_name}, {os.cpu_count()} cores), torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}, {args.steps} timed rounds after {args.warmup} "
          f"warm-up, prior_rank {args.rank} ({args.prior} prior), regularized params {reg_params / 1e6:.1f} M")
    plain = runs["plain"]
    plain_med = statistics.median(plain.times)
    head = (f"{'config':<20}{'step ms':>10}{'x plain':>9}{'x paired':>10}{'x range':>12}{'reg ms/hook':>13}{'hook mean':>11}"
            f"{'reg ms/pair':>13}{'extra mem':>11}{'peak delta MB':>15}  breakdown (x reg. params)")
    print(head)
    results = {}
    for name, run in runs.items():
        med = statistics.median(run.times)
        hook = statistics.median(run.hook_times)
        pair = statistics.median([a - b for a, b in zip(run.times, plain.times)])
        per_round = [a / b for a, b in zip(run.times, plain.times)]
        spread = f"{min(per_round):.3f}-{max(per_round):.3f}"
        extra, parts = run.extra_memory()
        peak = f"{(peaks[name] - peaks['plain']) / 2**20:.0f}" if peaks else "-"
        extra_s = f"{extra:.2f}" if extra is not None else "-"
        results[name] = dict(step=med, hook=hook, pair=pair, extra=extra, plain=plain_med)
        mean = statistics.fmean(run.hook_times)
        print(f"{name:<20}{1000 * med:>10.1f}{med / plain_med:>9.3f}{1 + pair / plain_med:>10.3f}{spread:>12}"
              f"{1000 * hook:>13.1f}"
              f"{1000 * mean:>11.1f}{1000 * pair:>13.1f}{extra_s:>11}{peak:>15}  {parts}")
    report_targets(results)
    if args.profile:
        profile_hooks(args, runs)


def report_targets(results: dict[str, dict[str, Any]]) -> None:
    if "srft-grad" not in results:
        return
    srft = results["srft-grad"]
    ratio = srft["step"] / srft["plain"]
    paired = 1 + srft["pair"] / srft["plain"]
    print(f"target: srft-grad step <= 1.10 x plain: {ratio:.3f} (ratio of medians), {paired:.3f} (paired) "
          f"{'OK' if max(ratio, paired) <= 1.10 else 'ABOVE TARGET'}")
    if "authors-step" in results:
        speedup = results["authors-step"]["hook"] / max(srft["hook"], 1e-12)
        print(f"target: srft-grad hook work >= 5x faster than authors-step: {speedup:.1f}x "
              f"{'OK' if speedup >= 5 else 'BELOW TARGET'}")
    print(f"target: srft-grad extra memory <= 2.0 x: {srft['extra']:.2f} {'OK' if srft['extra'] <= 2.0 else 'ABOVE'}")


if __name__ == "__main__":
    main()
