"""The recipes: :class:`PretrainConfig` (RGB pretraining) and :class:`FinetuneConfig` (RGB-X fine-tuning), every
field documented and validated (a bad value raises ``ValueError`` naming the field and the value).

Choices of the fine-tuning recipe (each a field):

* Prior calibration (``srft``, ``srft-prior-only``, ``ewc``): the objective is the tracking loss of the
  RGB-initialised dual-stream model itself, on RGB (pretraining-domain) pairs fed as RGB-X input ``[rgb, rgb]``
  (X := RGB), ``prior_batches`` batches. The RGB pairs come from ``rgb_root``, or the ``pretrain`` split of the demo
  RGB set (demo data v2, where the shipped tracker was pretrained) when the default demo tracker is used, or else the
  RGB channels of the RGB-X training sequences. The RGB-retention test (``evaluate_rgb``) reads the same source's
  test split (the demo RGB set's ``retention``).
* ``prior_scope``: what the prior covers (default ``"pretrained"``: not the weights whose pretrained value has no
  RGB meaning; see :func:`~srft_peft.tracking.train.methods.prior_scope_fields`).
* AdamW with ``weight_decay=0`` on the parameters SRFT regularizes (decay would pull them toward 0 instead of toward
  the pretrained weights theta0) and ``weight_decay`` on the other trainable parameters (all of them for ``full``,
  ``prompt``, ``lora``); the parameters named ``backbone*`` at ``backbone_lr_multiplier`` times the learning rate,
  cosine decay to 0 or OSTrack's step schedule (``lr_schedule``) after ``warmup_steps``.
* ``preset``: the recipe fields left at None (augmentations, learning rates, drop path, schedule, candidate-elimination
  warm-up, the tracker's CE preset, jitter) take the preset's values: ``demo`` (the CPU demo's), ``ostrack256-ce``
  (OSTrack's), ``vipt-rgbt`` (ViPT's); :data:`RECIPE_PRESETS`, sources in :data:`RECIPE_SOURCES`.
* ``clip_order``: gradients are clipped to ``grad_clip`` (OSTrack: 0.1) after the prior gradient is added
  (``"total"``, default: the nominal lambda is the effective one, and EWC / L2-SP, whose penalty enters the same way,
  are clipped alike) or before (``"task"``, the first recipe's order).
* ``kappa_horizon``: kappa(t) reaches kappa_end after this fraction of the steps (1 = the lr's cosine shape).
* Steps, not epochs: training draws ``steps * grad_accum * batch_size * num_processes`` pairs, item ``i`` seeded by
  ``(seed, i)``, so a run is deterministic given its seed and a resumed run skips exactly the batches already used.
* Validation (``eval_every``) on the ``val`` split when the data has one, or on ``val_from_train`` sequences taken
  out of the training set; ``early_stopping`` keeps the weights of the best validation SR for the test evaluation.
  Validation and the final test are spread over all processes (sequences balanced by frame count).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ...config import SRFTConfig
from ..datasets import demo_datasets, get_dataset
from ..model import FUSION_INITS, PRESETS
from .methods import METHODS, PRIOR_SCOPES, SRFT_METHODS, method_srft_config

__all__ = ["CLIP_ORDERS", "DEFAULT_LR", "LR_SCHEDULES", "MODALITY_DATASETS", "RECIPE_FIELDS", "RECIPE_PRESETS",
           "RECIPE_SOURCES", "FinetuneConfig", "PretrainConfig"]

DEFAULT_LR = {"prompt": 1e-3, "lora": 1e-3}  # PEFT methods train few, freshly initialised weights
DEFAULT_FULL_LR = 2e-4
#: RGB-X modality -> the dataset a fine-tune of that modality uses by default (the ``demo`` records of DATASETS).
MODALITY_DATASETS = {m: name for m, name in demo_datasets().items() if m != "rgb"}
CLIP_ORDERS = ("total", "task")
TINY_SIZES = (32, 64)  # template / search crop of the CPU demo tracker (4 + 16 tokens at patch 16)
OSTRACK_JITTER = (3.0, 0.25)  # OSTrack's search-region centre / scale jitter
DEMO_JITTER = (1.5, 0.5)  # the demo tracker's: centre jitter halved, scale jitter doubled (see PretrainConfig)
LR_SCHEDULES = ("cosine", "step")

#: The recipe fields a preset sets (a field left at None takes its preset's value; see FinetuneConfig.recipe).
RECIPE_FIELDS = ("lr", "backbone_lr_multiplier", "drop_path", "lr_schedule", "lr_drop_at", "lr_drop_factor",
                 "flip_prob", "crop_flip_prob", "gray_prob", "brightness_jitter", "ce_start_fraction",
                 "ce_warm_fraction", "tracker_preset", "center_jitter", "scale_jitter")
_OSTRACK_AUGMENT = {"flip_prob": 0.5, "crop_flip_prob": 0.5, "gray_prob": 0.05, "brightness_jitter": 0.2}
_OSTRACK_OPTIM = {"lr": 4e-4, "backbone_lr_multiplier": 0.1, "drop_path": 0.1, "lr_schedule": "step",
                  "lr_drop_factor": 0.1, "tracker_preset": "ostrack256_ce", "center_jitter": OSTRACK_JITTER[0],
                  "scale_jitter": OSTRACK_JITTER[1]}
#: Recipe presets (FinetuneConfig.preset). Epoch counts of the sources become fractions of ``steps``.
#: None = the rule of the field's help (``lr``: the method's default; jitter: by tracker; ``tracker_preset``: none).
RECIPE_PRESETS: dict[str, dict[str, Any]] = {
    "demo": {"lr": None, "backbone_lr_multiplier": 1.0, "drop_path": 0.0, "lr_schedule": "cosine", "lr_drop_at": 0.8,
             "lr_drop_factor": 0.1, "flip_prob": 0.0, "crop_flip_prob": 0.0, "gray_prob": 0.0,
             "brightness_jitter": 0.0, "ce_start_fraction": 0.0, "ce_warm_fraction": 0.0, "tracker_preset": None,
             "center_jitter": None, "scale_jitter": None},
    # experiments/ostrack/vitb_256_mae_ce_32x4_ep300.yaml: EPOCH 300, LR_DROP_EPOCH 240, CE_START_EPOCH 20,
    # CE_WARM_EPOCH 80
    "ostrack256-ce": {**_OSTRACK_OPTIM, **_OSTRACK_AUGMENT, "lr_drop_at": 240 / 300, "ce_start_fraction": 20 / 300,
                      "ce_warm_fraction": 80 / 300},
    # experiments/vipt/deep_rgbt.yaml: EPOCH 60, LR_DROP_EPOCH 48, CE_START_EPOCH 4, CE_WARM_EPOCH 16
    "vipt-rgbt": {**_OSTRACK_OPTIM, **_OSTRACK_AUGMENT, "lr_drop_at": 48 / 60, "ce_start_fraction": 4 / 60,
                  "ce_warm_fraction": 16 / 60},
}
#: Where each preset's values come from (shown in docs/tracking.md).
RECIPE_SOURCES = {
    "demo": "this project: the CPU demo's own recipe (the README numbers)",
    "ostrack256-ce": "botaoye/OSTrack experiments/ostrack/vitb_256_mae_ce_32x4_ep300.yaml, lib/train/base_functions.py "
                     "(augmentations, optimizer groups), lib/utils/ce_utils.py (keep-ratio warm-up)",
    "vipt-rgbt": "jiawen-zhu/ViPT experiments/vipt/deep_rgbt.yaml, lib/train/base_functions.py",
}


@dataclass
class PretrainConfig:
    """Recipe of :func:`pretrain_rgb` (OSTrack's recipe scaled down to a CPU-sized tracker and data set)."""

    steps: int = field(default=900, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=16, metadata={"help": "Pairs per step."})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (OSTrack: 4e-4 with an MAE-initialised "
                                                     "ViT; a ViT from scratch needs more), cosine decay to 0."})
    warmup_steps: int = field(default=50, metadata={"help": "Linear warm-up steps before the cosine decay."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay (OSTrack: 1e-4)."})
    grad_clip: float = field(default=0.1, metadata={"help": "Gradient-norm clip (OSTrack: 0.1); 0 = off."})
    center_jitter: float = field(
        default=DEMO_JITTER[0],
        metadata={"help": "Search-centre jitter (OSTrack: 3). Halved: a tiny tracker trained from scratch for minutes "
                  "learns to localise faster when the target stays nearer the centre, where the tracker looks."},
    )
    scale_jitter: float = field(
        default=DEMO_JITTER[1],
        metadata={"help": "Search log-scale jitter (OSTrack: 0.25). Doubled: a wider range of target sizes teaches "
                  "the size head to correct a wrong previous box instead of compounding it."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the initialisation and of the pair sampling."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"PretrainConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"PretrainConfig.warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")


@dataclass
class FinetuneConfig:
    """Everything :func:`finetune_rgbx` needs; every field is a command-line flag of the examples."""

    method: str = field(default="srft", metadata={"help": f"One of {', '.join(METHODS)}."})
    modality: str = field(default="rgbt", metadata={"help": "X modality: rgbt, rgbd or rgbe."})
    data_root: str | None = field(
        default=None,
        metadata={"help": "Dataset root holding the train and test splits (e.g. LasHeR with trainingset/ and "
                  "testingset/); default: the demo data v2 set of the modality (train / val / test), created if "
                  "absent."},
    )
    dataset: str | None = field(
        default=None,
        metadata={"help": "Loader name (lasher, rgbt234, gtot, depthtrack, visevent, fe108, coesot, ...); default: "
                  "lasher / depthtrack / visevent for rgbt / rgbd / rgbe."},
    )
    train_root: str | None = field(default=None, metadata={"help": "Training split folder (overrides data_root)."})
    test_root: str | None = field(default=None, metadata={"help": "Test split folder (overrides data_root)."})
    val_root: str | None = field(
        default=None, metadata={"help": "Validation split folder; default: the val/ split under the data root (or of "
                                "the demo set) when there is one, else no validation."}
    )
    test_dataset: str | None = field(
        default=None,
        metadata={"help": "Loader of the test set when it is another benchmark than the training set (e.g. train on "
                  "lasher, test on rgbt234 with --test-root); same modality; default: --dataset."},
    )
    val_from_train: int = field(
        default=0,
        metadata={"help": "Take this many sequences out of the training set and validate on them (for data sets "
                  "without a val split, such as LasHeR): evenly spaced in the name-sorted training list, the same on "
                  "every run; their names go to output_dir/val_sequences.txt. 0 = off; not with --val-root."},
    )
    train_split_file: str | None = field(default=None, metadata={"help": "File listing training sequence names."})
    test_split_file: str | None = field(default=None, metadata={"help": "File listing test sequence names."})
    pretrained: str | None = field(
        default=None,
        metadata={"help": "RGB tracker: a save_tracker folder or an OSTrack .pth.tar; default: the demo tracker shipped "
                  "with the package (pretrained on the demo RGB set v2; checksums verified, nothing is trained)."},
    )
    variant: str = field(default="tiny", metadata={"help": "ViT size when --pretrained is a .pth.tar: tiny/small/base."})
    template_size: int | None = field(default=None, metadata={"help": "Template crop for a .pth.tar (base: 128)."})
    search_size: int | None = field(default=None, metadata={"help": "Search crop for a .pth.tar (base: 256)."})
    tracker_preset: str | None = field(
        default=None,
        metadata={"help": "OSTrack configuration of a --pretrained .pth.tar: " + ", ".join(sorted(PRESETS)) + " (the *_ce "
                  "presets add candidate elimination, as in vitb_256_mae_ce_32x4_ep300); replaces --variant and the "
                  "crop sizes. Default: the --preset's (ostrack256-ce, vipt-rgbt: ostrack256_ce), else --variant / "
                  "--template-size / --search-size, no candidate elimination."},
    )
    allow_partial_load: bool = field(
        default=False,
        metadata={"help": "Accept a --pretrained .pth.tar whose keys or shapes do not all match the tracker (the rest "
                  "stays randomly initialised); by default that is an error."},
    )
    prior: str | None = field(
        default=None,
        metadata={"help": "Prior significance to load (folder or Hub repo id, see srft.save_pretrained); default: "
                  "estimate it on RGB pairs."},
    )
    rgb_root: str | None = field(
        default=None,
        metadata={"help": "RGB-only sequences (<seq>/img + groundtruth.txt; with train/ and test/ or the sequences "
                  "themselves) for the prior and for --evaluate-rgb; default: the demo RGB set v2 (pretrain/ for the "
                  "prior, retention/ for the retention test) with the demo tracker, "
                  "else the RGB channels of the RGB-X sequences."},
    )
    prior_batches: int = field(default=8, metadata={"help": "Calibration batches for the prior."})
    output_dir: str = field(default="outputs/finetune", metadata={"help": "Where results, plots, logs, model go."})
    steps: int = field(default=150, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=16, metadata={"help": "Pairs per process and micro-batch."})
    lr: float | None = field(
        default=None, metadata={"help": "Learning rate (of the head, fusion and prompts; see backbone_lr_multiplier); "
                                "default: the preset's (OSTrack / ViPT: 4e-4), with preset 'demo' 2e-4 (full, SRFT "
                                "family) or 1e-3 (prompt, lora)."}
    )
    weight_decay: float = field(
        default=1e-4, metadata={"help": "AdamW weight decay of the parameters SRFT does not regularize (0 on those it "
                                "does)."}
    )
    warmup_steps: int = field(default=0, metadata={"help": "Linear learning-rate warm-up steps before the cosine or "
                                                     "step schedule (OSTrack: none)."})
    grad_clip: float = field(default=0.1, metadata={"help": "Gradient-norm clip (OSTrack: 0.1); 0 = off."})
    clip_order: str = field(
        default="total",
        metadata={"help": "What grad_clip clips: 'total' = the task gradient plus the prior (EWC / L2-SP penalty) "
                  "gradient lambda_p(t) grad R_prior, added before clipping (srft.add_prior_gradient), so the "
                  "effective lambda is the nominal one; 'task' = the task gradient only, the prior gradient added "
                  "after clipping by the optimizer hook (the effective lambda then grows as the clip shrinks the task "
                  "gradient: about 17x nominal on the demo)."},
    )
    prior_scope: str = field(
        default="pretrained",
        metadata={"help": "What SRFT / EWC / L2-SP regularize in the dual-stream tracker: 'all' (every trainable "
                  "parameter but the head), 'pretrained' (all but the weights without RGB meaning: the X-stream "
                  "patch embedding, and the fusion blocks' attn.proj / mlp.fc2 under identity fusion init) or "
                  "'rgb-stream' (the RGB stream only). srft_overrides target_modules / exclude_modules win."},
    )
    kappa_horizon: float = field(
        default=1.0,
        metadata={"help": "SRFTConfig.kappa_horizon of the SRFT methods: fraction of the steps over which kappa goes "
                  "from kappa_start to kappa_end (1 = kappa has the learning rate's cosine shape)."},
    )
    grad_accum: int = field(default=1, metadata={"help": "Gradient accumulation steps (micro-batches per step)."})
    preset: str = field(
        default="demo",
        metadata={"help": "Recipe preset: " + ", ".join(RECIPE_PRESETS) + ". It gives every recipe field left unset "
                  "(None) its value: 'demo' is the CPU demo's recipe, 'ostrack256-ce' OSTrack's "
                  "(vitb_256_mae_ce_32x4_ep300) and 'vipt-rgbt' ViPT's (deep_rgbt), epochs turned into fractions of "
                  "--steps; those two need --pretrained (an OSTrack-CE checkpoint). Sources: docs/tracking.md."},
    )
    center_jitter: float | None = field(
        default=None, metadata={"help": "Search-centre jitter of the training pairs; default: the preset's, else the "
                                "demo tracker's 1.5 with the demo tracker, OSTrack's 3 otherwise."}
    )
    scale_jitter: float | None = field(
        default=None, metadata={"help": "Search log-scale jitter; default: the preset's, else 0.5 with the demo "
                                "tracker, OSTrack's 0.25 otherwise."}
    )
    flip_prob: float | None = field(
        default=None, metadata={"help": "Horizontal flip of template and search together (OSTrack: 0.5); default: the "
                                "preset's (demo: 0)."}
    )
    crop_flip_prob: float | None = field(
        default=None, metadata={"help": "A further horizontal flip of each crop on its own (OSTrack: 0.5; a crop ends "
                                "flipped when exactly one of the two flips is drawn); default: the preset's (demo: 0)."}
    )
    gray_prob: float | None = field(
        default=None, metadata={"help": "RGB channels of both crops to gray (OSTrack: 0.05); default: the preset's "
                                "(demo: 0)."}
    )
    brightness_jitter: float | None = field(
        default=None, metadata={"help": "Each crop times a brightness factor uniform in [1 - b, 1 + b] (OSTrack: 0.2); "
                                "default: the preset's (demo: 0)."}
    )
    backbone_lr_multiplier: float | None = field(
        default=None, metadata={"help": "Learning rate of the parameters named *backbone* (both ViT streams) = lr "
                                "times this; the rest (fusion, prompts, head) trains at lr (OSTrack: 0.1); default: "
                                "the preset's (demo: 1)."}
    )
    drop_path: float | None = field(
        default=None, metadata={"help": "Stochastic depth of the ViT blocks, rising linearly to this rate at the last "
                                "block, in training mode only (OSTrack: 0.1); default: the preset's (demo: 0)."}
    )
    lr_schedule: str | None = field(
        default=None, metadata={"help": "Learning-rate shape after --warmup-steps: 'cosine' (to 0) or 'step' (constant, "
                                "times --lr-drop-factor from --lr-drop-at on; OSTrack's); default: the preset's "
                                "(demo: cosine)."}
    )
    lr_drop_at: float | None = field(
        default=None, metadata={"help": "'step' schedule: fraction of the steps where the lr drops (OSTrack: 240 of 300 "
                                "epochs = 0.8); default: the preset's."}
    )
    lr_drop_factor: float | None = field(
        default=None, metadata={"help": "'step' schedule: the lr is multiplied by this at the drop (OSTrack: 0.1); "
                                "default: the preset's."}
    )
    ce_start_fraction: float | None = field(
        default=None, metadata={"help": "Candidate-elimination warm-up: every search token is kept for this fraction "
                                "of the steps (OSTrack: 20 of 300 epochs), then the keep ratio anneals (cosine) to the "
                                "tracker's ce_keep_ratio over --ce-warm-fraction; needs a CE tracker; default: the "
                                "preset's (demo: 0)."}
    )
    ce_warm_fraction: float | None = field(
        default=None, metadata={"help": "Fraction of the steps over which the keep ratio anneals from 1 to the "
                                "tracker's (OSTrack: 80 of 300 epochs); 0 with ce_start_fraction 0 = fixed ratio; "
                                "default: the preset's (demo: 0)."}
    )
    mixed_precision: str = field(default="no", metadata={"help": "no, bf16 or fp16 (fp16 needs a GPU)."})
    seed: int = field(default=0, metadata={"help": "Seed (model initialisation, pair sampling)."})
    num_workers: int | None = field(
        default=None, metadata={"help": "DataLoader worker processes per training process (0 = load in the training "
                                "process); default: min(8, CPUs // processes on this machine) with a GPU, 0 on the CPU "
                                "(there the training step itself uses the cores)."}
    )
    prefetch_factor: int = field(
        default=4, metadata={"help": "Batches each DataLoader worker prepares ahead (with num_workers > 0)."}
    )
    num_threads: int | None = field(
        default=None, metadata={"help": "Intra-op CPU threads per process; default 1 on the CPU unless OMP_NUM_THREADS "
                                "is set (the small tracker gains nothing from more, and they contend)."}
    )
    lora_r: int = field(default=8, metadata={"help": "lora: rank."})
    lora_alpha: float = field(default=16.0, metadata={"help": "lora: alpha."})
    fusion_init: str = field(
        default="identity", metadata={"help": "Dual-stream fusion blocks at step 0: 'identity' (the model fed [rgb, "
                                      "rgb] is the RGB tracker) or 'copy' (the SRFT authors'); see "
                                      "OSTrackRGBX.init_from_rgb."}
    )
    srft_overrides: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "SRFTConfig fields on top of the method's preset (e.g. prior_rank)."}
    )
    save_every: int = field(
        default=0, metadata={"help": "accelerator.save_state every N steps (0 = no step rule); with either rule a "
                             "checkpoint is also written at the last step."}
    )
    save_every_minutes: float = field(
        default=30.0, metadata={"help": "accelerator.save_state when this many minutes have passed since the last "
                                "checkpoint (0 = no time rule); checked every log_every steps, the same step on every "
                                "process."}
    )
    keep_checkpoints: int = field(
        default=2, metadata={"help": "Newest checkpoints kept in output_dir/checkpoints, older ones deleted (0 = keep "
                             "all)."}
    )
    resume: str | None = field(
        default=None, metadata={"help": "Resume from a checkpoint folder, or 'latest' in output_dir/checkpoints."}
    )
    log_every: int = field(default=10, metadata={"help": "Log loss/kappa/penalty every N steps."})
    report_to: str | None = field(default="tensorboard", metadata={"help": "accelerate tracker ('none' = off)."})
    eval_sequences: int | None = field(default=None, metadata={"help": "Evaluate on the first N test sequences."})
    eval_frames: int | None = field(default=None, metadata={"help": "Evaluate on the first N frames of each."})
    eval_every: int = field(
        default=0, metadata={"help": "Evaluate on the validation sequences every N steps (and at step 0 and the last "
                             "step); the curve goes to results.json 'validation'. 0 = never."}
    )
    val_sequences: int | None = field(
        default=None, metadata={"help": "Validate on the first N validation sequences (eval_frames frames each)."}
    )
    early_stopping: bool = field(
        default=False, metadata={"help": "Keep the weights of the best validation SR (needs eval_every and a "
                                 "validation split) and evaluate those on the test sets; any method."}
    )
    evaluate_baseline: bool = field(
        default=True, metadata={"help": "Also evaluate the start: the converted dual-stream model at step 0 on the same "
                                "test sequences as RGB-X input (with evaluate_rgb also on the RGB-only ones)."}
    )
    evaluate_rgb_tracker: bool = field(
        default=False, metadata={"help": "Also evaluate the RGB tracker itself on the RGB channels of the test "
                                 "sequences (not where the dual-stream methods start; see evaluate_baseline)."}
    )
    evaluate_rgb: bool = field(
        default=True,
        metadata={"help": "Also evaluate RGB-skill retention (what SRFT is for, so on by default): the fine-tuned model "
                  "(and the start, with evaluate_baseline) on RGB-only test sequences fed as [rgb, rgb] (see rgb_root)."},
    )
    progress: bool = field(default=True, metadata={"help": "tqdm progress bars (main process)."})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.modality not in MODALITY_DATASETS:
            raise ValueError(f"modality must be one of {sorted(MODALITY_DATASETS)}, got {self.modality!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.fusion_init not in FUSION_INITS:
            raise ValueError(f"fusion_init must be one of {list(FUSION_INITS)}, got {self.fusion_init!r}")
        for name in ("steps", "batch_size", "grad_accum", "prior_batches", "log_every", "lora_r"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("save_every", "keep_checkpoints", "warmup_steps", "eval_every", "val_from_train"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.num_workers is not None and (isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int)
                                             or self.num_workers < 0):
            raise ValueError(f"num_workers must be a non-negative integer or None (automatic), got {self.num_workers!r}")
        if isinstance(self.prefetch_factor, bool) or not isinstance(self.prefetch_factor, int) or self.prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be a positive integer, got {self.prefetch_factor!r}")
        minutes = self.save_every_minutes
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not 0 <= minutes < float("inf"):
            raise ValueError(f"save_every_minutes must be a finite number >= 0, got {minutes!r}")
        if self.tracker_preset is not None and self.tracker_preset not in PRESETS:
            raise ValueError(f"tracker_preset must be one of {sorted(PRESETS)} or None, got {self.tracker_preset!r}")
        self._check_recipe()
        self._check_preset_fields()
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.report_to in ("none", ""):
            self.report_to = None
        unknown = sorted(set(self.srft_overrides) - {f.name for f in dataclasses.fields(SRFTConfig)})
        if unknown:
            raise ValueError(f"srft_overrides has unknown SRFTConfig fields {unknown}")
        method_srft_config(self.method, self.steps, self.method_srft_overrides)  # a bad value fails here, not later

    def _check_recipe(self) -> None:
        if self.clip_order not in CLIP_ORDERS:
            raise ValueError(f"clip_order must be one of {list(CLIP_ORDERS)}, got {self.clip_order!r}")
        if self.prior_scope not in PRIOR_SCOPES:
            raise ValueError(f"prior_scope must be one of {list(PRIOR_SCOPES)}, got {self.prior_scope!r}")
        horizon = self.kappa_horizon
        if isinstance(horizon, bool) or not isinstance(horizon, (int, float)) or not 0.0 < horizon <= 1.0:
            raise ValueError(f"kappa_horizon must be a number in (0, 1], got {horizon!r}")
        if self.clip_order == "task" and self.srft_overrides.get("apply") == "loss":
            raise ValueError("clip_order='task' cannot hold with srft_overrides apply='loss' (the penalty is then in "
                             "the loss, inside the clipped gradient): use clip_order='total'")
        if self.val_sequences is not None and (isinstance(self.val_sequences, bool)
                                               or not isinstance(self.val_sequences, int) or self.val_sequences < 1):
            raise ValueError(f"val_sequences must be a positive integer or None, got {self.val_sequences!r}")
        if self.val_from_train and self.val_root is not None:
            raise ValueError(f"val_from_train={self.val_from_train} and val_root={self.val_root!r} both choose the "
                             "validation sequences: give one")
        if self.test_dataset is not None:
            record = get_dataset(self.test_dataset)  # an unknown name lists the registered ones
            if record.modality != self.modality:
                raise ValueError(f"test_dataset {self.test_dataset!r} is {record.modality} data but the run is "
                                 f"{self.modality}: choose a {self.modality} test set")
        if self.early_stopping and self.eval_every == 0:
            raise ValueError("early_stopping=True needs eval_every > 0 (validation during training), got eval_every=0")

    def _check_preset_fields(self) -> None:
        if self.preset not in RECIPE_PRESETS:
            raise ValueError(f"preset must be one of {list(RECIPE_PRESETS)}, got {self.preset!r}")
        if self.preset != "demo" and self.pretrained is None:
            raise ValueError(f"preset={self.preset!r} is a ViT-B recipe: give pretrained (an OSTrack-CE .pth.tar, "
                             "e.g. OSTrack_ep0300.pth.tar of vitb_256_mae_ce_32x4_ep300); the demo tracker uses "
                             "preset='demo'")

        def number(name: str, low: float, high: float, high_open: bool = False, low_open: bool = False) -> None:
            value = getattr(self, name)
            if value is None:
                return
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            ok = ok and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
            if not ok:
                interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
                raise ValueError(f"{name} must be a number in {interval} or None (the preset's), got {value!r}")

        for name in ("flip_prob", "crop_flip_prob", "gray_prob", "ce_start_fraction", "ce_warm_fraction"):
            number(name, 0.0, 1.0)
        number("brightness_jitter", 0.0, 1.0)
        number("drop_path", 0.0, 1.0, high_open=True)
        number("backbone_lr_multiplier", 0.0, math.inf, low_open=True, high_open=True)
        number("lr_drop_at", 0.0, 1.0, low_open=True)
        number("lr_drop_factor", 0.0, 1.0, low_open=True)
        if self.lr_schedule is not None and self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)} or None, got {self.lr_schedule!r}")
        recipe = self.recipe
        if recipe["ce_start_fraction"] + recipe["ce_warm_fraction"] > 1.0:
            raise ValueError(f"ce_start_fraction + ce_warm_fraction must be <= 1, got {recipe['ce_start_fraction']!r} "
                             f"+ {recipe['ce_warm_fraction']!r}")

    @property
    def recipe(self) -> dict[str, Any]:
        """The recipe fields in effect: each field of :data:`RECIPE_FIELDS` that is set, else its ``preset``'s value.

        Example:
            >>> cfg = FinetuneConfig(preset="ostrack256-ce", pretrained="OSTrack_ep0300.pth.tar", drop_path=0.2)
            >>> cfg.recipe["backbone_lr_multiplier"], cfg.recipe["drop_path"], cfg.recipe["lr_schedule"]
            (0.1, 0.2, 'step')
        """
        preset = RECIPE_PRESETS[self.preset]
        return {name: preset[name] if getattr(self, name) is None else getattr(self, name) for name in RECIPE_FIELDS}

    @property
    def method_srft_overrides(self) -> dict[str, Any]:
        """The recipe's SRFTConfig fields (kappa_horizon) for an SRFT-family method, then ``srft_overrides``."""
        recipe = {"kappa_horizon": self.kappa_horizon} if self.method in SRFT_METHODS else {}
        return {**recipe, **self.srft_overrides}

    @property
    def learning_rate(self) -> float:
        """The base learning rate: ``lr``, else the preset's, else the method's default."""
        lr = self.recipe["lr"]
        return lr if lr is not None else DEFAULT_LR.get(self.method, DEFAULT_FULL_LR)

    @property
    def dataset_name(self) -> str:
        return self.dataset or MODALITY_DATASETS[self.modality]

    @property
    def test_dataset_name(self) -> str:
        return self.test_dataset or self.dataset_name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


