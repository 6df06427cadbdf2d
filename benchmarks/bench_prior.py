"""Cost of estimating the prior significance (K-FAC), against the same number of plain forward+backward passes.

For a timm ViT of a given width (embed dim, MLP ratio 4, heads = embed / 64) and depth, and N calibration batches of
random images, with the label-free objective 1/2 ||f(x)||^2 that ``estimate_prior`` uses without labels:

    plain ms     N plain passes: forward, objective, ``backward()`` into the parameters' ``.grad`` (eval mode, as in
                 calibration)
    prior ms     ``estimate_prior_significance`` END TO END over the same N batches: the calibration passes (forward
                 hooks, one ``autograd.grad`` to the layer outputs, K-FAC factor sums, per-example diagonal Fisher of
                 biases/norms, per-batch Fisher of the rest), the eigenpairs of every factor and the normalization
    accum ms     the part of ``prior`` spent adding a^T a and g^T g into the factors (``_Accumulator.add``)
    eig ms       the part of ``prior`` spent in ``KFACSignificance.from_factors`` (the kept eigenpairs of A and S, with
                 ``--eigen-solver``; it does not depend on N)
    eigh ms      with ``--compare-eigh``: the same ``from_factors`` calls with the full float64 ``eigh``
    x plain      prior / plain, the end-to-end ratio of the medians (target <= 1.3 at N = 8, <= 2 at N = 2); ``x range``
                 the smallest and largest ratio of one repeat's estimation to its own plain passes; ``collect x`` =
                 (prior - eig) / plain, the calibration passes alone
    eig share    eig / prior
    factors MB   bytes of all A and S factors (``--factor-dtype``, the library's default) and their multiple of the weights'
    kept MB      bytes of the kept significance (U, V, omega per matrix, Fisher per other tensor, float32)
    stride       ``factor_token_stride`` (``--token-strides``): factors accumulated over every k-th token
    overlap      for stride > 1: mean over matrices of ||U_1^T U_k||_F^2 / k for both factors, against stride 1's
                 retained eigenvectors (1 = the same directions)

Measurements of plain and prior alternate (``--repeats`` times, medians) so that machine noise hits both alike. The
eigendecompositions are sensitive to the thread count and to other load on the machine; the header prints the thread
count.

    # width sweep (embed 192/384/768, depth 2) and N sweep (embed 384), 224 px, batch 8, one thread
    OMP_NUM_THREADS=1 python benchmarks/bench_prior.py --threads 1
    # the issue's target: ViT-B (12 blocks, width 768) at N = 8, three alternating repeats; the K-FAC factors' bytes in
    # float32 and float64 are printed under each row
    OMP_NUM_THREADS=1 python benchmarks/bench_prior.py --threads 1 --vit-b --repeats 3
    # quick validation
    OMP_NUM_THREADS=1 python benchmarks/bench_prior.py --threads 1 --img-size 64 --widths 192 384 --ns 1 2 --repeats 1
    # GPU
    python benchmarks/bench_prior.py --device cuda --widths 384 768 --depth 12 --ns 4 16 64
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "srft_peft").is_dir():  # run from a checkout: benchmark this checkout's library, not an installed one
    sys.path.insert(0, str(ROOT))
import srft_peft.significance.estimation as estimation  # noqa: E402
from srft_peft import SRFTConfig  # noqa: E402
from srft_peft.config import FACTOR_DTYPES  # noqa: E402
from srft_peft.significance import KFACSignificance  # noqa: E402
from srft_peft.targeting import select_targets  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_model(embed: int, depth: int, args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, embed_dim=embed, depth=depth,
                              num_heads=max(1, embed // 64), img_size=args.img_size, num_classes=100)
    return model.to(args.device).eval()


def plain_passes(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    for x in batches:
        model.zero_grad(set_to_none=True)
        out = model(x)
        (0.5 * out.float().pow(2).flatten(1).sum(1).mean()).backward()
    model.zero_grad(set_to_none=True)


class Timer:
    """Adds up the time spent in ``owner.attr`` (a function or classmethod) while installed; bench-only instrumentation."""

    def __init__(self, owner: type, attr: str, device: str) -> None:
        self.owner, self.attr, self.device, self.total = owner, attr, device, 0.0
        self._descriptor = owner.__dict__[attr]

    def __enter__(self) -> Timer:
        orig, timer = getattr(self.owner, self.attr), self

        def timed(*args, **kwargs):
            sync(timer.device)
            t0 = time.perf_counter()
            out = orig(*args, **kwargs)
            sync(timer.device)
            timer.total += time.perf_counter() - t0
            return out

        is_classmethod = isinstance(self._descriptor, classmethod)
        setattr(self.owner, self.attr, staticmethod(timed) if is_classmethod else timed)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self.owner, self.attr, self._descriptor)


def subspace_overlap(kept: list[KFACSignificance], exact: list[KFACSignificance]) -> float:
    """Mean over matrices and both factors of ||U_exact^T U||_F^2 / k: 1 = the same retained directions."""
    scores = []
    for e, x in zip(kept, exact):
        for a, b in ((e.U, x.U), (e.V, x.V)):
            k = min(a.shape[1], b.shape[1])
            scores.append(float((b[:, :k].T.double() @ a[:, :k].double()).pow(2).sum()) / k)
    return statistics.fmean(scores)


def measure(embed: int, depth: int, n: int, args: argparse.Namespace, stride: int = 1,
            exact: list[KFACSignificance] | None = None) -> dict[str, float]:
    model = make_model(embed, depth, args)
    config = SRFTConfig(prior_rank=args.rank, factor_dtype=args.factor_dtype, factor_token_stride=stride,
                        eigen_solver=args.eigen_solver)
    targets = select_targets(model, None, None, config.prior_estimator)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(args.batch, 3, args.img_size, args.img_size, generator=g).to(args.device) for _ in range(n)]
    plain_passes(model, batches[:1])  # warm-up (allocator, kernels)
    plain, total, accum, eig = [], [], [], []
    for _ in range(args.repeats):
        sync(args.device)
        t0 = time.perf_counter()
        plain_passes(model, batches)
        sync(args.device)
        plain.append(time.perf_counter() - t0)

        with Timer(estimation._Accumulator, "add", args.device) as add_timer, \
                Timer(KFACSignificance, "from_factors", args.device) as eig_timer:
            t0 = time.perf_counter()
            prior = estimation.estimate_prior_significance(model, targets, batches, config, progress=False)
            sync(args.device)
            total.append(time.perf_counter() - t0)
        accum.append(add_timer.total)
        eig.append(eig_timer.total)
    kept = [e for e in prior.entries.values() if isinstance(e, KFACSignificance)]
    eigh = compare_eigh(model, targets, batches, config, args) if args.compare_eigh else float("nan")

    def nbytes(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    weights = sum(nbytes(t.param) for t in targets if t.kind == "kfac")
    factors = factor_bytes_all(targets, config.factor_dtype)
    kept_bytes = sum(nbytes(x) for x in prior.tensors().values())
    med = statistics.median
    ratios = [b / a for a, b in zip(plain, total)]  # each repeat's estimation against its own plain passes
    return dict(embed=embed, depth=depth, n=n, stride=stride, params=sum(p.numel() for p in model.parameters()),
                plain=med(plain), prior=med(total), accum=med(accum), eig=med(eig), eigh=eigh,
                ratio_lo=min(ratios), ratio_hi=max(ratios),
                factors=factors, factors32=factor_bytes_all(targets, "float32"),
                factors64=factor_bytes_all(targets, "float64"), weights=weights, kept=kept_bytes, entries=kept,
                overlap=subspace_overlap(kept, exact) if exact is not None else 1.0)


def factor_bytes_all(targets: list, dtype: str) -> int:
    """Bytes of the (n x n) and (m x m) factors of every K-FAC target in ``dtype`` (from the shapes)."""
    size = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    return sum((m * m + n * n) * size for m, n in (t.matrix_shape for t in targets if t.kind == "kfac"))


def compare_eigh(model: torch.nn.Module, targets: list, batches: list[torch.Tensor], config: SRFTConfig,
                 args: argparse.Namespace) -> float:
    """Seconds of ``from_factors`` over every factor with the full float64 eigh (the previous computation)."""
    stats = estimation.collect_statistics(model, targets, batches, config, progress=False)
    sync(args.device)
    t0 = time.perf_counter()
    for name, (A, S) in stats.factors.items():
        KFACSignificance.from_factors(name, A, S, config.prior_rank, config.prior_energy, config.damping, solver="eigh")
    sync(args.device)
    return time.perf_counter() - t0


def measure_strides(embed: int, depth: int, n: int, args: argparse.Namespace) -> None:
    """Print one row per ``--token-strides`` value as it is measured; the overlap column compares each with the exact
    (stride 1) prior."""
    exact = measure(embed, depth, n, args)
    print_row(exact)
    for s in args.token_strides:
        if s != 1:
            print_row(measure(embed, depth, n, args, s, exact["entries"]))


def print_header(title: str) -> None:
    print(f"\n{title}")
    print(f"{'embed':>6}{'depth':>6}{'params M':>9}{'N':>4}{'stride':>7}{'overlap':>8}{'plain ms':>10}"
          f"{'prior ms':>10}{'accum ms':>10}{'eig ms':>9}{'eigh ms':>9}{'collect x':>10}{'x plain':>8}{'x range':>12}"
          f"{'eig share':>10}{'factors MB':>11}{'x W':>6}{'kept MB':>9}", flush=True)


def print_row(r: dict[str, float]) -> None:
    spread = f"{r['ratio_lo']:.2f}-{r['ratio_hi']:.2f}"
    print(f"{r['embed']:>6}{r['depth']:>6}{r['params'] / 1e6:>9.2f}{r['n']:>4}{r['stride']:>7}{r['overlap']:>8.3f}"
          f"{1000 * r['plain']:>10.0f}{1000 * r['prior']:>10.0f}{1000 * r['accum']:>10.0f}{1000 * r['eig']:>9.0f}"
          f"{1000 * r['eigh']:>9.0f}{(r['prior'] - r['eig']) / r['plain']:>10.2f}{r['prior'] / r['plain']:>8.2f}"
          f"{spread:>12}{r['eig'] / r['prior']:>10.1%}"
          f"{r['factors'] / 2**20:>11.1f}{r['factors'] / r['weights']:>6.1f}{r['kept'] / 2**20:>9.2f}", flush=True)
    print(f"    K-FAC factors (from the shapes): {r['factors32'] / 2**20:.1f} MB in float32, "
          f"{r['factors64'] / 2**20:.1f} MB in float64", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="*", default=[192, 384, 768], help="embed dims of the width sweep")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--n-width", type=int, default=2, help="calibration batches in the width sweep")
    parser.add_argument("--ns", type=int, nargs="*", default=[1, 2, 4, 8], help="calibration batches of the N sweep")
    parser.add_argument("--n-sweep-width", type=int, default=384, help="embed dim of the N sweep")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=32, help="prior_rank")
    parser.add_argument("--factor-dtype", choices=list(FACTOR_DTYPES), default=SRFTConfig().factor_dtype,
                        help="factor_dtype (default: the library's)")
    parser.add_argument("--token-strides", type=int, nargs="+", default=[1, 4],
                        help="factor_token_stride values; each row with stride > 1 is compared with stride 1")
    parser.add_argument("--eigen-solver", choices=["auto", "eigh", "subspace"], default="auto", help="eigen_solver")
    parser.add_argument("--compare-eigh", action="store_true",
                        help="also time from_factors with the full eigh on the same factors (column eigh ms)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    parser.add_argument("--vit-b", action="store_true",
                        help="the issue's target, ViT-B (timm vit_base_patch16_224 built from its config, random init): "
                        "the defaults become --widths (none) --depth 12 --n-sweep-width 768 --ns 8 --token-strides 1; "
                        "options given explicitly still apply")
    if "--vit-b" in sys.argv[1:]:
        parser.set_defaults(widths=[], depth=12, n_sweep_width=768, ns=[8], token_strides=[1])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"# {datetime.date.today()}  prior estimation cost: timm ViT (patch 16, MLP ratio 4) @ {args.img_size}px, "
          f"batch {args.batch}, device {args.device} ({device_name}, {os.cpu_count()} cores), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, factors {args.factor_dtype}, eigen_solver {args.eigen_solver}, "
          f"prior_rank {args.rank}, "
          f"{args.repeats} repeats (medians)")
    if args.widths:
        print_header(f"width sweep (depth {args.depth}, N = {args.n_width} batches)")
        for embed in args.widths:
            measure_strides(embed, args.depth, args.n_width, args)
    if args.ns:
        print_header(f"N sweep (embed {args.n_sweep_width}, depth {args.depth})")
        for n in args.ns:
            measure_strides(args.n_sweep_width, args.depth, n, args)

if __name__ == "__main__":
    main()
