"""`SRFTConfig`: every choice of the method as a documented, validated field.

Example:
    >>> from srft_peft import SRFTConfig
    >>> cfg = SRFTConfig(prior_rank=16, total_steps=1000)
    >>> SRFTConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

KAPPA_SHAPES = ("cosine", "linear", "exponential", "constant", "step")
PRIOR_ESTIMATORS = ("kfac", "diagonal")
CALIBRATION_OBJECTIVES = ("auto", "model_loss", "output_norm")
APPLY_MODES = ("grad", "loss")
PRIOR_APPLICATIONS = ("gradient", "decoupled", "proximal")
TRANSFER_MODES = ("value", "rank")
RANK_MAPPINGS = ("scatter", "gather")
EIGEN_SOLVERS = ("auto", "eigh", "subspace")
TRANSFER_STATISTICS = ("auto", "own", "optimizer")
FACTOR_DTYPES = ("float32", "float64")


def check_pattern(name: str, pattern: str) -> None:
    """Raise ``ValueError`` naming ``name`` and ``pattern`` unless ``pattern`` is a valid regular expression."""
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{name} is not a valid regular expression: {pattern!r} ({e})") from None


@dataclass
class SRFTConfig:
    """Configuration of Significance-Regularized Fine-Tuning.

    Fields are grouped as in the method: which parameters (targeting), the prior significance (estimated once on
    pretraining-domain data), the transfer significance (online, on the target data), the schedule kappa(t) that moves
    from one to the other, and how the regularizer is applied. Every field validates in ``__post_init__`` and a bad
    value raises ``ValueError`` naming the field and the value.

    Example:
        >>> cfg = SRFTConfig(target_modules=r"blocks\\.\\d+\\..*", prior_rank=32, total_steps=2000)
        >>> cfg.kappa_shape
        'cosine'
    """

    # --- which parameters -------------------------------------------------------------------------------------------
    target_modules: Union[str, list[str], None] = field(
        default=None,
        metadata={
            "help": "Which modules/parameters to regularize. A string is a regular expression that must fully match a "
            "module name or a parameter name; a list holds exact names or dotted suffixes (e.g. 'qkv' matches "
            "'blocks.0.attn.qkv', 'pos_embed' matches 'backbone.pos_embed'); 'all-linear' takes every nn.Linear and "
            "nn.Conv2d outside the output head. None (default) takes every trainable parameter except the output head "
            "(modules named head, heads, classifier, box_head, lm_head, pooler, fc)."
        },
    )
    exclude_modules: Union[str, list[str], None] = field(
        default=None,
        metadata={"help": "Modules/parameters to leave out, with the same matching rules as target_modules."},
    )

    # --- prior significance -----------------------------------------------------------------------------------------
    prior_estimator: str = field(
        default="kfac",
        metadata={
            "help": "'kfac': Kronecker-factored Fisher (token-level 'expand') for every Linear/Conv2d weight, "
            "eigendecomposed and truncated to the steepest directions; the diagonal Fisher for every other "
            "parameter. 'diagonal': the diagonal empirical Fisher for all parameters (cheaper, no directions)."
        },
    )
    prior_rank: Union[int, None] = field(
        default=32,
        metadata={
            "help": "Eigen-directions kept per Kronecker factor (k_out = min(rank, out_features), k_in = min(rank, "
            "in_features)). With prior_energy set it is the cap; None means no cap."
        },
    )
    prior_energy: Union[float, None] = field(
        default=None,
        metadata={
            "help": "If set (0 < e <= 1), keep the fewest eigen-directions holding this fraction of each factor's trace "
            "(capped by prior_rank)."
        },
    )
    calibration_objective: str = field(
        default="auto",
        metadata={
            "help": "Objective for estimate_prior when no loss_fn is given: 'model_loss' uses the model's own "
            "output.loss (Hugging Face models given labels); 'output_norm' is the label-free 1/2 ||f(x)||^2 of "
            "Memory Aware Synapses; 'auto' uses output.loss when the model returns one, else output_norm."
        },
    )
    factor_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype in which estimate_prior computes the Kronecker factors: the products a^T a, g^T g (upper "
            "triangles only) and their running sums. The eigenpairs are computed in float64 either way. 'float32' "
            "takes half the memory of 'float64' (1.3 GB instead of 2.6 GB for a ViT-B) and runs the products about "
            "2x faster; its factors differ from float64 ones by at most R u sqrt(M_ii M_jj) per entry (R token rows "
            "summed, u = 2^-24), so each eigenvalue by at most R u tr(M) (docs: Concepts, Factor precision)."
        },
    )
    factor_token_stride: int = field(
        default=1,
        metadata={
            "help": "Accumulate the K-FAC factors over every k-th token of each batch (the offset cycles with the batch "
            "index) and scale up, instead of over all tokens: the factor products, most of estimate_prior's extra cost, "
            "shrink about k-fold; the factors stay unbiased. 1 = every token (exact)."
        },
    )
    damping: float = field(
        default=0.0,
        metadata={"help": "Non-negative value added to every retained curvature before normalization (0 = none)."},
    )
    eigen_solver: str = field(
        default="auto",
        metadata={
            "help": "How the kept eigenpairs of each factor are computed (in float64): 'eigh' a full "
            "eigendecomposition; 'subspace' a seeded block subspace iteration for the kept pairs only (residuals <= "
            "1e-5 of the largest eigenvalue; prior_energy uses the exact trace), falling back to eigh if it does not "
            "converge; 'auto' subspace where it is cheaper (factors wider than 1024 with few pairs kept), else eigh."
        },
    )

    # --- transfer significance --------------------------------------------------------------------------------------
    transfer_mode: str = field(
        default="value",
        metadata={
            "help": "How spikiness s = v / mean(v) becomes the element factor r in [0, 1]: 'value' r = clamp(s / "
            "spikiness_max) every step; 'rank' r = normalized rank of s inside its tensor (the authors' released code; "
            "a sort per tensor, refreshed every rank_interval steps)."
        },
    )
    transfer_beta: float = field(
        default=0.99,
        metadata={"help": "EMA factor of the squared gradient v (own statistics only; see transfer_statistics)."},
    )
    transfer_statistics: str = field(
        default="auto",
        metadata={
            "help": "Where v comes from: 'own' keeps an EMA of g^2 (one extra copy of the parameters); 'optimizer' "
            "reuses Adam/AdamW's exp_avg_sq (beta = the optimizer's beta2, no extra memory); 'auto' reuses it when "
            "the optimizer has one."
        },
    )
    spikiness_max: float = field(
        default=4.0,
        metadata={"help": "'value' mode: the spikiness s at and above which an element gets the strongest damping."},
    )
    rank_interval: int = field(
        default=10,
        metadata={"help": "'rank' mode: recompute the per-tensor ranks every this many optimizer steps."},
    )
    rank_mapping: str = field(
        default="scatter",
        metadata={
            "help": "'rank' mode: 'scatter' gives the k-th smallest spikiness the k-th value of linspace(m_min, "
            "m_max) (what is meant); 'gather' reproduces the authors' released indexing bit for bit."
        },
    )
    damping_min: float = field(default=0.25, metadata={"help": "m_min: damping of the calmest elements."})
    damping_max: float = field(default=0.65, metadata={"help": "m_max: damping of the spikiest elements."})
    sparsity_gamma: float = field(
        default=0.0,
        metadata={
            "help": "Exponent of the per-tensor gradient-sparsity modulation: r is multiplied by Hoyer(sqrt(v))^gamma, "
            "i.e. r = min(s / spikiness_max, 1) * H^gamma ('value') or rank(s) * H^gamma ('rank'), in [0, 1] (0 = off)."
        },
    )

    # --- schedule ---------------------------------------------------------------------------------------------------
    kappa_shape: str = field(
        default="cosine",
        metadata={"help": "Shape of kappa(t) from kappa_start to kappa_end: " + ", ".join(KAPPA_SHAPES) + "."},
    )
    kappa_start: float = field(default=1.0, metadata={"help": "kappa at step 0 (in [0, 1])."})
    kappa_end: float = field(default=0.0, metadata={"help": "kappa at step total_steps (in [0, 1])."})
    kappa_step_at: float = field(
        default=0.5, metadata={"help": "'step' shape: fraction of training at which kappa drops from start to end."}
    )
    kappa_horizon: float = field(
        default=1.0,
        metadata={
            "help": "Fraction of total_steps over which kappa goes from kappa_start to kappa_end (then stays at "
            "kappa_end), in (0, 1]. 1 ties kappa's shape to the whole run, i.e. to a cosine learning rate's; below 1 "
            "the transfer term acts while the learning rate is still large (cosine lr and kappa: 0.5 puts 54 % of the "
            "lr-weighted update under the transfer term instead of 25 %). 'step': kappa_step_at is a fraction of it."
        },
    )
    total_steps: Union[int, None] = field(
        default=None,
        metadata={
            "help": "T, the number of optimizer steps of the fine-tune. Needed by every shape but 'constant'; can also "
            "be given to attach()."
        },
    )
    lambda_prior: float = field(
        default=1.0, metadata={"help": "Prior coefficient: lambda_p(t) = lambda_prior * kappa(t)."}
    )
    lambda_transfer: float = field(
        default=1.0,
        metadata={"help": "Transfer strength: gamma(t) = lambda_transfer * (1 - kappa(t)); in [0, 1]."},
    )

    # --- application ------------------------------------------------------------------------------------------------
    apply: str = field(
        default="grad",
        metadata={
            "help": "'grad': add lambda_p * grad R_prior to the gradients once per optimizer step (fused, no autograd "
            "graph); 'loss': add lambda_p * R_prior to outputs.loss in forward (works with an unchanged "
            "transformers.Trainer; srft_loss() returns it for hand-written loops)."
        },
    )

    prior_application: str = field(
        default="gradient",
        metadata={
            "help": "Where the prior enters the update (eta = the param group's lr at the step, lambda_p = "
            "lambda_prior * kappa(t), theta' = the optimizer's result from the task gradient alone, F = the prior's "
            "curvature (U x V) diag(omega) (U x V)^T or diag(F)): 'gradient' adds lambda_p * F (theta - theta0) to the "
            "gradient before the optimizer, which an adaptive optimizer rescales per element, so lambda has no fixed "
            "meaning; 'decoupled' theta <- theta' - eta * lambda_p * F (theta_t - theta0), removing a share eta * "
            "lambda_p * omega of the drift along each kept direction per step (as AdamW decouples weight decay; keep "
            "eta * lambda_p * omega < 2 on the steepest direction); 'proximal' theta <- theta0 + (I + eta * lambda_p * "
            "F)^-1 (theta' - theta0), removing a share eta*lambda_p*omega / (1 + eta*lambda_p*omega), stable for any "
            "lambda. srft-peft inspect --lr prints these shares. Only 'gradient' with apply='loss' and with LoRA "
            "adapters."
        },
    )

    omega_max: Union[float, None] = field(
        default=None,
        metadata={
            "help": "Largest curvature the prior applies: every normalized curvature (K-FAC omega and diagonal Fisher; "
            "mean 1 over the kept K-FAC directions) above it is clipped to it when the prior is set, in every "
            "prior_application mode, so that no tensor is pinned far harder than the rest (on the demo tracker the RGB "
            "patch embedding's omega reaches ~276). The stored significance is not changed. None = no clip (the "
            "paper's). Validation ablation (docs: Benchmarks, omega's normalizer): 10 helped the demo slightly."
        },
    )

    monitor_balance: bool = field(
        default=False,
        metadata={
            "help": "Record at every optimizer step the norms of the task update, the prior's pull (or proximal "
            "shrink), the transfer damping and the drift along the kept directions, read by SRFTModel.balance() and "
            "logged by SRFTCallback and the tracking recipe (same as calling srft.monitor()). Off: no cost; on: one "
            "float32 buffer of the regularized parameters' size, no host sync in the step."
        },
    )

    def __post_init__(self) -> None:
        self._check_choice("prior_estimator", PRIOR_ESTIMATORS)
        self._check_choice("calibration_objective", CALIBRATION_OBJECTIVES)
        self._check_choice("eigen_solver", EIGEN_SOLVERS)
        self._check_choice("factor_dtype", FACTOR_DTYPES)
        self._check_choice("transfer_mode", TRANSFER_MODES)
        self._check_choice("transfer_statistics", TRANSFER_STATISTICS)
        self._check_choice("rank_mapping", RANK_MAPPINGS)
        self._check_choice("kappa_shape", KAPPA_SHAPES)
        self._check_choice("apply", APPLY_MODES)
        self._check_choice("prior_application", PRIOR_APPLICATIONS)
        if not isinstance(self.monitor_balance, bool):
            raise ValueError(f"monitor_balance must be True or False, got {self.monitor_balance!r}")
        if self.apply == "loss" and self.prior_application != "gradient":
            raise ValueError(f"prior_application={self.prior_application!r} needs apply='grad' (the loss term "
                             "lambda_p * R_prior is a gradient-mode prior by definition); apply='loss' supports "
                             "prior_application='gradient' only")
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = list(value)
                setattr(self, name, value)
            if value is not None and not isinstance(value, str):
                if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                    raise ValueError(f"{name} must be a regex string, a list of non-empty names or None, got {value!r}")
            if isinstance(value, str) and value != "all-linear":
                check_pattern(name, value)
        if self.prior_rank is not None and (isinstance(self.prior_rank, bool) or not isinstance(self.prior_rank, int)
                                            or self.prior_rank < 1):
            raise ValueError(f"prior_rank must be a positive integer or None, got {self.prior_rank!r}")
        if self.prior_energy is not None:
            self._check_range("prior_energy", 0.0, 1.0, low_open=True)
        if self.prior_estimator == "kfac" and self.prior_rank is None and self.prior_energy is None:
            raise ValueError("prior_rank and prior_energy cannot both be None with prior_estimator='kfac'")
        stride = self.factor_token_stride
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"factor_token_stride must be a positive integer, got {stride!r}")
        self._check_range("damping", 0.0, math.inf)
        self._check_range("transfer_beta", 0.0, 1.0, high_open=True)
        self._check_range("spikiness_max", 0.0, math.inf, low_open=True)
        self._check_range("damping_min", 0.0, 1.0)
        self._check_range("damping_max", 0.0, 1.0)
        if self.damping_min > self.damping_max:
            raise ValueError(f"damping_min ({self.damping_min!r}) must not exceed damping_max ({self.damping_max!r})")
        self._check_range("sparsity_gamma", 0.0, math.inf)
        if isinstance(self.rank_interval, bool) or not isinstance(self.rank_interval, int) or self.rank_interval < 1:
            raise ValueError(f"rank_interval must be a positive integer, got {self.rank_interval!r}")
        self._check_range("kappa_start", 0.0, 1.0)
        self._check_range("kappa_end", 0.0, 1.0)
        self._check_range("kappa_step_at", 0.0, 1.0)
        self._check_range("kappa_horizon", 0.0, 1.0, low_open=True)
        if self.total_steps is not None and (isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int)
                                             or self.total_steps < 1):
            raise ValueError(f"total_steps must be a positive integer or None, got {self.total_steps!r}")
        self._check_range("lambda_prior", 0.0, math.inf)
        self._check_range("lambda_transfer", 0.0, 1.0)
        if self.omega_max is not None:
            self._check_range("omega_max", 0.0, math.inf, low_open=True)

    # --- validation helpers -----------------------------------------------------------------------------------------
    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")

    def _check_range(self, name: str, low: float, high: float, low_open: bool = False, high_open: bool = False) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if too_low or too_high:
            lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
            raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {value!r}")

    # --- serialization ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serializable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, strict: bool = False) -> SRFTConfig:
        """Build from a dict. Unknown keys raise with ``strict=True``; otherwise they are returned to the caller to warn.

        Example:
            >>> SRFTConfig.from_dict({"prior_rank": 8}).prior_rank
            8
        """
        if not isinstance(data, dict):
            raise TypeError(f"SRFTConfig.from_dict needs a dict, got {type(data).__name__} {data!r:.80}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown and strict:
            raise ValueError(f"unknown SRFTConfig fields: {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json_file(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Field name -> help string (used for the configuration reference in the docs and the CLI)."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

