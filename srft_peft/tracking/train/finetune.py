"""RGB-X fine-tuning (:func:`finetune_rgbx`) under 🤗 accelerate (one or several processes, mixed precision, gradient
accumulation, checkpoints and exact resumption), with validation during training, early stopping and a one-pass
evaluation of the result, of its start and of its RGB-skill retention.

Example:
    >>> from srft_peft.tracking.train import FinetuneConfig, finetune_rgbx
    >>> results = finetune_rgbx(FinetuneConfig(method="srft", modality="rgbt"))  # doctest: +SKIP
    >>> results["metrics"]["SR"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ...checkpoint import CONFIG_NAME
from ...config import SRFTConfig
from ...integrations.accelerate import prepare_srft
from ...model import SRFTModel, get_srft_model
from ...schedule import transfer_share
from ..checkpoint_io import load_tracker, save_tracker
from ..datasets import Sequence
from ..model import OSTrackRGBX
from ..plots import plot_summaries
from ..sampling import TrackingPairDataset, collate
from .checkpoints import CheckpointRule, resume_point, save_checkpoint
from .common import (
    ce_keep_ratio_at,
    collate_rgb_as_rgbx,
    configure_threads,
    lr_lambda,
    pair_loss,
    progress_bar,
    set_seed,
    to_device,
)
from .config import DEMO_JITTER, OSTRACK_JITTER, FinetuneConfig
from .data import RGBXSplits, demo_rgb_split, load_rgb_split, load_rgbx_splits, make_loader, truncate_sequence
from .evaluate import Processes, evaluate_tracker, jsonable, scalars
from .methods import SRFT_METHODS, build_finetune_model, method_srft_config, prior_scope_fields, tracker_of, uniform_prior
from .pretrain import load_pretrained_rgb

__all__ = ["Validation", "clip_gradients", "finetune_rgbx", "make_accelerator", "optimizer_groups", "rgb_sequences"]


def make_accelerator(cfg: FinetuneConfig, output_dir: Path) -> Any:
    """The ``accelerate.Accelerator`` of a run (mixed precision, accumulation, logging under ``output_dir``)."""
    from accelerate import Accelerator

    log_with = cfg.report_to
    if log_with == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            warnings.warn("tensorboard is not installed: logging disabled (pip install tensorboard)", stacklevel=3)
            log_with = None
    return Accelerator(cpu=cpu_distributed(), mixed_precision=cfg.mixed_precision,
                       gradient_accumulation_steps=cfg.grad_accum, log_with=log_with, project_dir=str(output_dir))


def _local_processes(accelerator: Any) -> int:
    """Training processes on this machine (torchrun / accelerate launch set ``LOCAL_WORLD_SIZE``)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))


def cpu_distributed() -> bool:
    """True when several processes were launched (``accelerate launch --multi_gpu``, ``torchrun``) on a machine without
    an accelerator device: accelerate then needs ``cpu=True`` to join them with gloo instead of running each alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "LOCAL_RANK" not in os.environ:
        return False
    available = getattr(getattr(torch, "accelerator", None), "is_available", None)
    has_device = available() if available is not None else torch.cuda.is_available()
    return not has_device


def rgb_sequences(cfg: FinetuneConfig, split: str, demo_tracker: bool, rgbx: list[Sequence]) -> list[Sequence]:
    """RGB-only sequences for the prior (train) or the retention test (test): ``cfg.rgb_root``'s, else with the demo
    tracker the demo RGB set's (``pretrain`` / ``retention``), else ``rgbx`` (read through their RGB channels)."""
    if cfg.rgb_root is not None:
        return load_rgb_split(cfg.rgb_root, split)
    if demo_tracker:
        return demo_rgb_split(split)
    return rgbx  # RGB channels of the RGB-X sequences (read with rgb_only=True)


def clip_gradients(accelerator: Any, srft: SRFTModel | None, params: list[nn.Parameter], max_norm: float,
                   clip_order: str) -> None:
    """Clip the gradients of ``params`` to ``max_norm`` (0 = no clip) at an optimizer step (after the last
    micro-batch's backward). ``clip_order="total"``: SRFT's prior gradient lambda_p(t) grad R_prior (EWC's and L2-SP's
    penalty gradient alike) is added first, so the clip covers it; ``"task"``: only the task gradient is clipped and
    the optimizer hook adds the prior gradient afterwards. With ``apply="loss"`` the penalty is in the loss already."""
    if clip_order == "total" and srft is not None and srft.srft_config.apply == "grad":
        srft.add_prior_gradient(scaler=getattr(accelerator, "scaler", None))
    if max_norm > 0:
        accelerator.clip_grad_norm_(params, max_norm)


@dataclass
class Validation:
    """Validation during training: the curve of the validation metrics and, with ``keep_best``, the weights of the
    best validation SR (first best on ties). Every process calls it at the same steps: the sequences are spread over
    ``processes`` (:func:`~.evaluate.evaluate_tracker`), every process gets the same summary and keeps the same state,
    and the main process writes it to ``folder``: ``validation.json`` and, with ``keep_best``, ``best_model/`` (so a
    resumed run keeps them); the boxes of the last pass go to ``folder/validation_results``."""

    sequences: list[Sequence]
    device: Any
    folder: Path
    keep_best: bool = False
    processes: Processes = field(default_factory=Processes)
    history: list[dict[str, float]] = field(default_factory=list)
    best_step: int | None = None
    best_state: dict[str, torch.Tensor] | None = None

    @property
    def best_sr(self) -> float:
        return max((e["SR"] for e in self.history if e["step"] == self.best_step), default=-math.inf)

    def __call__(self, model: OSTrackRGBX, step: int) -> dict[str, float]:
        """Evaluate ``model`` (left in eval mode) at ``step``; record it, and its weights if it is the best."""
        summary = evaluate_tracker(model, self.sequences, self.folder / "validation_results", self.device,
                                   progress=False, processes=self.processes)
        entry = {"step": step, **{k: v for k, v in scalars(summary).items() if k != "fps"}}
        main = self.processes.is_main
        if self.keep_best and entry["SR"] > self.best_sr:
            self.best_step = step
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if main:
                save_tracker(model, self.folder / "best_model")
        self.history.append(entry)
        if main:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "validation.json").write_text(json.dumps(
                {"history": self.history, "best_step": self.best_step}, indent=2) + "\n")
        return entry

    def restore(self, step: int) -> None:
        """Read the state saved by a run resumed at ``step``: the entries up to ``step`` and the best weights if they
        are from then (a later best is recomputed: the run is deterministic)."""
        state_file = self.folder / "validation.json"
        if not state_file.is_file():
            return
        state = json.loads(state_file.read_text())
        self.history = [e for e in state.get("history", []) if e["step"] <= step]
        best = state.get("best_step")
        if self.keep_best and best is not None and best <= step and (self.folder / "best_model").is_dir():
            self.best_step = best
            self.best_state = load_tracker(self.folder / "best_model").state_dict()


@dataclass
class _Run:
    """What the steps of :func:`finetune_rgbx` share."""

    cfg: FinetuneConfig
    output_dir: Path
    accelerator: Any
    splits: RGBXSplits
    rgb_model: OSTrackRGBX
    demo_tracker: bool
    jitter: dict[str, float]
    pretrained_desc: str
    processes: Processes = field(default_factory=Processes)

    @property
    def show(self) -> bool:
        return self.cfg.progress and self.accelerator.is_local_main_process

    @property
    def device(self) -> Any:
        return self.accelerator.device


def _srft_config(run: _Run, model: nn.Module) -> SRFTConfig | None:
    """The method's SRFTConfig with the recipe's prior scope (unless srft_overrides choose the targets)."""
    cfg = run.cfg
    overrides = cfg.method_srft_overrides
    if cfg.method not in SRFT_METHODS:  # FinetuneConfig checked the overrides against the method
        return None
    if not {"target_modules", "exclude_modules"} & set(cfg.srft_overrides):
        overrides = {**prior_scope_fields(model, cfg.prior_scope, cfg.fusion_init), **overrides}
    return method_srft_config(cfg.method, cfg.steps, overrides)


def _attach_prior(run: _Run, srft: SRFTModel, resume: tuple[Path, int] | None) -> str:
    """Give ``srft`` its prior (uniform, loaded or estimated on [rgb, rgb] pairs); returns its description."""
    cfg, tcfg = run.cfg, run.rgb_model.config
    saved_prior = run.output_dir / "prior"
    if cfg.method == "l2sp":
        srft.set_prior(uniform_prior(srft))
        return "uniform (L2-SP)"
    if srft.srft_config.lambda_prior == 0.0:
        return "none (lambda_prior = 0)"
    if cfg.prior is not None:
        srft.load_significance(cfg.prior)
        return f"loaded: {cfg.prior}"
    if resume is not None and (saved_prior / CONFIG_NAME).is_file():
        srft.load_significance(saved_prior)
        return f"loaded: {saved_prior} (resume)"
    calib = rgb_sequences(cfg, "train", run.demo_tracker, run.splits.train)
    data = TrackingPairDataset(calib, samples_per_epoch=cfg.prior_batches * cfg.batch_size,
                               template_size=tcfg.template_size, search_size=tcfg.search_size,
                               rgb_only=True, seed=cfg.seed + 1, **run.jitter)
    loader = make_loader(data, cfg, run.device, collate_rgb_as_rgbx, _local_processes(run.accelerator))
    device = run.device

    def calibration_loss(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return pair_loss(m, to_device(batch, device))

    # Every process runs the same calibration batches: the estimator's all-reduce then leaves the single-process
    # result, identical on every process.
    srft.estimate_prior(loader, loss_fn=calibration_loss, progress=run.show)
    return f"estimated on {len(data)} RGB pairs ([rgb, rgb] input, tracking loss)"


def optimizer_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_multiplier: float = 1.0,
                     srft: SRFTModel | None = None) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable parameters of ``model``: learning rate ``lr * backbone_lr_multiplier``
    for those whose name contains ``backbone`` (both ViT streams; OSTrack's rule, ``lib/train/base_functions.py``)
    and ``lr`` for the rest (fusion blocks, prompts, head), times weight decay 0 on the parameters SRFT regularizes
    (decay would pull them toward 0, not theta0) and ``weight_decay`` on the others. Empty groups are left out.

    Example:
        >>> groups = optimizer_groups(model, 4e-4, 1e-4, backbone_lr_multiplier=0.1)  # doctest: +SKIP
        >>> sorted({g["lr"] for g in groups})  # doctest: +SKIP
        [4e-05, 0.0004]
    """
    regularized = {id(t.param) for t in srft.regularized_targets} if srft is not None else set()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if backbone_lr_multiplier == 1.0:  # one learning rate: the two weight-decay groups only
        by_lr = [(lr, [p for _, p in trainable])]
    else:
        by_lr = [(lr * backbone_lr_multiplier, [p for n, p in trainable if "backbone" in n]),
                 (lr, [p for n, p in trainable if "backbone" not in n])]
    groups = []
    for group_lr, params in by_lr:
        for decayed in (False, True):
            chosen = [p for p in params if (id(p) not in regularized) == decayed]
            if chosen:
                groups.append({"params": chosen, "lr": group_lr, "weight_decay": weight_decay if decayed else 0.0})
    return groups


def _optimizer(cfg: FinetuneConfig, model: nn.Module, srft: SRFTModel | None) -> torch.optim.Optimizer:
    groups = optimizer_groups(model, cfg.learning_rate, cfg.weight_decay, cfg.recipe["backbone_lr_multiplier"], srft)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate)


def _lr_lambda(cfg: FinetuneConfig, scale: int = 1) -> Any:
    """The run's learning-rate factor per scheduler step (``scale`` scheduler steps per optimizer step)."""
    recipe = cfg.recipe
    return lr_lambda(recipe["lr_schedule"], cfg.warmup_steps * scale, cfg.steps * scale, recipe["lr_drop_at"],
                     recipe["lr_drop_factor"])


def _ce_warmup(cfg: FinetuneConfig, model: nn.Module) -> Any:
    """``set(step)``: apply the keep-ratio warm-up for optimizer step ``step`` to the tracker inside ``model``; None
    when the recipe has no warm-up or the tracker no candidate elimination."""
    recipe = cfg.recipe
    if recipe["ce_start_fraction"] == 0 and recipe["ce_warm_fraction"] == 0:
        return None
    tracker = next(m for m in model.modules() if isinstance(m, OSTrackRGBX))
    ratios = tracker.config.ce_keep_ratio
    if not ratios:
        warnings.warn("ce_start_fraction / ce_warm_fraction set but the tracker has no candidate elimination "
                      "(ce_locations=()): no keep-ratio warm-up", stacklevel=3)
        return None

    def set_step(step: int) -> None:
        tracker.set_ce_keep_ratio(ce_keep_ratio_at(step, cfg.steps, recipe["ce_start_fraction"],
                                                   recipe["ce_warm_fraction"], ratios))

    return set_step


def _validation(run: _Run) -> Validation | None:
    cfg = run.cfg
    if cfg.eval_every == 0:
        return None
    seqs = [truncate_sequence(s, cfg.eval_frames) for s in run.splits.val[: cfg.val_sequences]]
    return Validation(seqs, run.device, run.output_dir, keep_best=cfg.early_stopping, processes=run.processes)


def _evaluate_all(run: _Run, final: OSTrackRGBX, results: dict[str, Any]) -> dict[str, Any]:
    """Test (and retention) evaluation of the fine-tuned model and of the start, with per-sequence scores. Every
    process takes part (its share of the sequences of each evaluation); the main process draws the plots."""
    cfg, out, device, show = run.cfg, run.output_dir, run.device, run.show
    main = run.accelerator.is_main_process

    def evaluate(model: OSTrackRGBX, seqs: list[Sequence], name: str, rgb_input: bool = False) -> dict[str, Any]:
        return evaluate_tracker(model, seqs, out / "tracking_results" / name, device, show, rgb_input=rgb_input,
                                processes=run.processes)

    def plots(summaries: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        return plot_summaries(summaries, out / "plots", prefix=prefix) if main else {}

    eval_seqs = [truncate_sequence(s, cfg.eval_frames) for s in run.splits.test[: cfg.eval_sequences]]
    results["dataset"] = eval_seqs[0].dataset if eval_seqs else cfg.test_dataset_name
    summary = evaluate(final, eval_seqs, cfg.method)
    results["metrics"] = scalars(summary)
    per_sequence = {"test": summary["per_sequence"]}
    summaries = {cfg.method: summary}
    start = OSTrackRGBX.from_rgb(run.rgb_model, "dual_stream", fusion_init=cfg.fusion_init) \
        if cfg.evaluate_baseline else None
    if start is not None:
        base = evaluate(start, eval_seqs, "start")
        results["baseline"] = f"converted dual-stream model at step 0 (fusion_init={cfg.fusion_init!r}), [rgb, X] input"
        results["baseline_metrics"] = scalars(base)
        per_sequence["start_test"] = base["per_sequence"]
        summaries["start (step 0)"] = base
    if cfg.evaluate_rgb_tracker:
        rgb = evaluate(run.rgb_model, eval_seqs, "rgb_tracker")
        results["rgb_tracker_metrics"] = scalars(rgb)
        summaries["RGB tracker (RGB channels)"] = rgb
    results["plots"] = {k: str(v) for k, v in plots(summaries).items()}
    if cfg.evaluate_rgb:
        rgb_test = rgb_sequences(cfg, "test", run.demo_tracker, run.splits.test)
        rgb_test = [truncate_sequence(s, cfg.eval_frames) for s in rgb_test[: cfg.eval_sequences]]
        rgb_ft = evaluate(final, rgb_test, f"{cfg.method}_rgb", rgb_input=True)
        results["rgb_metrics"] = scalars(rgb_ft)
        results["rgb_summary"] = rgb_ft
        per_sequence["retention"] = rgb_ft["per_sequence"]
        rgb_summaries = {f"{cfg.method} ([rgb, rgb])": rgb_ft}
        if start is not None:
            rgb_base = evaluate(start, rgb_test, "start_rgb", rgb_input=True)
            results["baseline_rgb_metrics"] = scalars(rgb_base)
            per_sequence["start_retention"] = rgb_base["per_sequence"]
            rgb_summaries["start (step 0)"] = rgb_base
        results["plots"].update({f"rgb_{k}": str(v) for k, v in plots(rgb_summaries, "rgb_").items()})
    results["summary"] = summary
    results["per_sequence"] = per_sequence
    return results


def _load_inputs(cfg: FinetuneConfig, output_dir: Path, accelerator: Any) -> _Run:
    """Data and the RGB tracker (built once; the other processes wait on the file locks), checked before anything is
    written."""
    splits = load_rgbx_splits(cfg)
    if cfg.eval_every and not splits.val:
        if cfg.early_stopping:
            raise ValueError(f"early_stopping needs validation sequences: no val split under {splits.description} "
                             "(give --val-root or --val-from-train)")
        warnings.warn(f"eval_every={cfg.eval_every}: no validation split under {splits.description}; validation "
                      "is off", stacklevel=3)
        cfg = dataclasses.replace(cfg, eval_every=0)
    rgb_model, pretrained_desc = load_pretrained_rgb(cfg.pretrained, cfg.variant, cfg.template_size, cfg.search_size,
                                                     progress=cfg.progress and accelerator.is_local_main_process,
                                                     allow_partial_load=cfg.allow_partial_load,
                                                     preset=cfg.recipe["tracker_preset"])
    demo_tracker = cfg.pretrained is None
    default_jitter = DEMO_JITTER if demo_tracker else OSTRACK_JITTER
    recipe = cfg.recipe
    jitter = {"center_jitter": default_jitter[0] if recipe["center_jitter"] is None else recipe["center_jitter"],
              "scale_jitter": default_jitter[1] if recipe["scale_jitter"] is None else recipe["scale_jitter"]}
    return _Run(cfg, output_dir, accelerator, splits, rgb_model, demo_tracker, jitter, pretrained_desc)


def finetune_rgbx(config: FinetuneConfig | None = None, accelerator: Any = None, **overrides: Any) -> dict[str, Any]:
    """Fine-tune an RGB tracker on RGB-X data with ``config.method``, evaluate it and write the results.

    Steps: data (the demo set is built if needed) -> RGB tracker (:func:`load_pretrained_rgb`) -> method model
    (:func:`build_finetune_model`; SRFT wrapped with :func:`~srft_peft.get_srft_model` over ``prior_scope`` and the
    prior estimated or loaded, then saved to ``output_dir/prior``) -> ``accelerator.prepare`` ->
    ``srft.attach(optimizer, steps)`` -> optional ``accelerator.load_state`` (``resume``) -> training loop
    (``accumulate``, ``backward``, :func:`clip_gradients` in ``clip_order``, cosine LR, ``log``, validation every
    ``eval_every`` steps, ``save_state`` when :class:`~.checkpoints.CheckpointRule` says so) -> the best-validation
    weights with ``early_stopping``, ``save_tracker`` to ``output_dir/model`` (main process), one-pass evaluation on
    the test sequences (and of the start, and on RGB with ``evaluate_rgb``) spread over every process, plots and
    ``results.json`` (main process). Validation, too, is spread over every process, so all of them reach every
    collective (:class:`~.evaluate.Processes`).

    Args:
        config: the run; ``overrides`` replace its fields.
        accelerator: an ``accelerate.Accelerator`` to use (its mixed precision / accumulation settings then apply);
            by default one is made from the config, logging to TensorBoard under ``output_dir``.

    Returns:
        The results (also in ``output_dir/results.json``) on the main process: ``metrics`` (PR, NPR, SR, and MPR/MSR
        or precision/recall/F where the protocol has them), ``baseline_metrics`` (the start: the converted dual-stream
        model at step 0 on the same sequences; ``evaluate_baseline``), ``rgb_metrics`` (``evaluate_rgb``),
        ``baseline_rgb_metrics`` (both), ``rgb_tracker_metrics`` (``evaluate_rgb_tracker``), ``per_sequence``
        (``test``, ``retention``, ``start_test``, ``start_retention``: per-sequence scores for paired statistics),
        ``validation`` (the curve, ``best_step``), ``final_step`` (whose weights were tested), ``transfer_share``,
        ``summary`` (curves), ``plots``, ``train_time_s``, ``final_loss``, parameter counts and the config. Other
        processes get ``{}``.
    """
    cfg = dataclasses.replace(config or FinetuneConfig(), **overrides)
    output_dir = Path(cfg.output_dir).expanduser()  # created once the inputs below have been read and checked
    accelerator = accelerator if accelerator is not None else make_accelerator(cfg, output_dir)
    processes = Processes.from_accelerator(accelerator)  # evaluations spread over every process
    configure_threads(cfg.num_threads, accelerator.device)
    set_seed(cfg.seed)
    resume = resume_point(cfg, output_dir)
    run = _load_inputs(cfg, output_dir, accelerator)
    run.processes = processes
    cfg, main, show, device = run.cfg, accelerator.is_main_process, run.show, run.device
    tcfg = run.rgb_model.config

    # --- the model of the method ------------------------------------------------------------------------------------
    set_seed(cfg.seed)
    model = build_finetune_model(cfg.method, run.rgb_model, cfg.lora_r, cfg.lora_alpha, cfg.fusion_init,
                                 drop_path=cfg.recipe["drop_path"]).to(device)
    srft_cfg = _srft_config(run, model)
    srft: SRFTModel | None = None
    prior_desc = "none (no SRFT)"
    if srft_cfg is not None:
        srft = get_srft_model(model, srft_cfg)
        model = srft
        prior_desc = _attach_prior(run, srft, resume)
        if main and srft.prior is not None and cfg.method != "l2sp":
            srft.save_pretrained(output_dir / "prior")
    output_dir.mkdir(parents=True, exist_ok=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    counts = {"total": sum(p.numel() for p in model.parameters()), "trainable": sum(p.numel() for p in trainable)}

    # --- optimizer, schedule, data loader ---------------------------------------------------------------------------
    optimizer = _optimizer(cfg, model, srft)
    procs = accelerator.num_processes
    # accelerate steps a prepared scheduler num_processes times per optimizer step
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, procs))
    ce_warmup = _ce_warmup(cfg, model)
    augment = {k: cfg.recipe[k] for k in ("flip_prob", "crop_flip_prob", "gray_prob", "brightness_jitter")}
    train_data = TrackingPairDataset(run.splits.train,
                                     samples_per_epoch=cfg.steps * cfg.grad_accum * cfg.batch_size * procs,
                                     template_size=tcfg.template_size, search_size=tcfg.search_size, seed=cfg.seed,
                                     **run.jitter, **augment)
    train_loader = make_loader(train_data, cfg, device, collate, _local_processes(accelerator), drop_last=True)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if srft is not None:
        prepare_srft(accelerator, srft, optimizer, total_steps=cfg.steps)

    start_step = 0
    if resume is not None:
        path, start_step = resume
        try:
            accelerator.load_state(str(path))
        except Exception as err:  # a damaged file that passed check_checkpoint's quick look
            raise ValueError(f"--resume {path}: could not load the checkpoint ({type(err).__name__}: {err})") from err
        if show:
            print(f"resumed from {path} (step {start_step})")

    if cfg.report_to is not None:
        hparams = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("finetune", config=hparams)

    validation = _validation(run)  # on every process: each validates its share of the sequences
    if validation is not None and start_step:
        validation.restore(start_step)
    if main and cfg.val_from_train:
        (output_dir / "val_sequences.txt").write_text("".join(f"{s.name}\n" for s in run.splits.val))

    def validate(step: int) -> None:
        if validation is not None and not any(e["step"] == step for e in validation.history):
            entry = validation(tracker_of(accelerator.unwrap_model(model)), step)
            model.train()
            accelerator.log({f"val/{k}": v for k, v in entry.items() if k != "step"}, step=step)

    # --- training -------------------------------------------------------------------------------------------------------
    validate(start_step)
    model.train()
    step = start_step
    loader: Any = train_loader
    if start_step:
        loader = accelerator.skip_first_batches(train_loader, start_step * cfg.grad_accum)
    bar = progress_bar(total=cfg.steps, initial=start_step, enabled=show, desc=f"fine-tuning ({cfg.method})",
                       unit="step")
    tic = time.perf_counter()
    checkpoints = CheckpointRule(cfg.save_every, cfg.save_every_minutes, cfg.steps, check_every=cfg.log_every,
                                 device=device)
    last_loss = math.nan
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    for batch in loader if step < cfg.steps else []:
        if ce_warmup is not None:
            ce_warmup(step)
        with accelerator.accumulate(model):
            loss = pair_loss(model, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                clip_gradients(accelerator, srft, trainable, cfg.grad_clip, cfg.clip_order)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach().float()
        loss_count += 1
        if not accelerator.sync_gradients:
            continue
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean_loss = accelerator.reduce(loss_sum / loss_count, reduction="mean")
            last_loss = float(mean_loss)
            logs = {"train/loss": last_loss, "train/lr": max(scheduler.get_last_lr())}  # the base (head) lr
            if srft is not None:
                with torch.no_grad():
                    logs["srft/kappa"] = srft.kappa
                    logs["srft/prior_penalty"] = float(srft.prior_penalty())
                logs.update({f"srft/{k}": v for k, v in srft.balance().items()})  # the monitor, when it is on
            accelerator.log(logs, step=step)
            bar.set_postfix(loss=f"{last_loss:.3f}")
            loss_sum.zero_()
            loss_count = 0
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            validate(step)
        if checkpoints.due(step):
            save_checkpoint(accelerator, output_dir, step, cfg.keep_checkpoints)
        if step >= cfg.steps:
            break
    bar.close()
    train_time = time.perf_counter() - tic
    accelerator.wait_for_everyone()

    # --- save (main process) and evaluate (every process, each its share of the sequences) -----------------------------
    final = tracker_of(accelerator.unwrap_model(model))
    final_step = step
    if validation is not None and validation.best_state is not None:
        final.load_state_dict(validation.best_state)  # every process holds the same best weights
        final_step = validation.best_step
    if main:
        save_tracker(final, output_dir / "model")
        if cfg.method == "lora":
            accelerator.unwrap_model(model).save_pretrained(str(output_dir / "adapter"))  # the last step's adapter
    lr_factors = [_lr_lambda(cfg)(t) for t in range(cfg.steps)]
    results: dict[str, Any] = {
        "method": cfg.method,
        "modality": cfg.modality,
        "data": run.splits.description,
        "pretrained": run.pretrained_desc,
        "prior": prior_desc,
        "srft_config": srft_cfg.to_dict() if srft_cfg is not None else None,
        "transfer_share": transfer_share(srft_cfg, lr_factors) if srft_cfg is not None else None,
        "steps": step,
        "final_step": final_step,
        "validation": None if validation is None else {"history": validation.history,
                                                        "best_step": validation.best_step,
                                                        "sequences": len(validation.sequences),
                                                        "from_train": cfg.val_from_train},
        "num_processes": procs,
        "train_time_s": train_time,
        "final_loss": last_loss,
        "parameters": counts,
        "config": cfg.to_dict(),
        "recipe": cfg.recipe,
    }
    results = jsonable(_evaluate_all(run, final, results))
    if main:
        (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    processes.close()  # every process returns once results.json is written
    accelerator.end_training()  # the trackers, then the training's process group
    return results if main else {}
