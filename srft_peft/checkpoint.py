"""Significance checkpoints: write, read, validate and load the prior significance of a pretrained model.

A checkpoint is a folder (or a Hugging Face Hub repo) with three files:

* ``srft_config.json``: every :class:`SRFTConfig` field plus the metadata in :data:`METADATA_KEYS` (format and library
  version, base model, calibration, normalizer c, dtypes, a fingerprint of the regularized parameters, per-parameter
  entries and whether a transfer state is included);
* ``significance.safetensors``: ``<param>.U``, ``<param>.V``, ``<param>.omega`` per K-FAC matrix, ``<param>.fisher``
  per diagonal tensor and, optionally, ``transfer.step`` and ``transfer.v.<param>``;
* ``README.md``: a model card.

Not the model weights and not the anchor theta0: the anchor is the base model's weights when the checkpoint is loaded.
Tensors are read only through safetensors, never unpickled. Loading is strict and atomic: everything is validated
before anything is set.

Example:
    >>> import tempfile, torch, torch.nn as nn
    >>> from srft_peft import SRFTConfig, SRFTModel, get_srft_model
    >>> torch.manual_seed(0) and None
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    >>> srft = get_srft_model(net, SRFTConfig(target_modules=["0"], prior_rank=2))
    >>> _ = srft.estimate_prior([torch.randn(16, 4)], progress=False)
    >>> folder = tempfile.mkdtemp()
    >>> srft.save_pretrained(folder)
    >>> again = SRFTModel.from_pretrained(net, folder, lambda_prior=0.5)
    >>> torch.equal(again.prior.entries["0.weight"].U, srft.prior.entries["0.weight"].U), again.srft_config.lambda_prior
    (True, 0.5)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import SRFTConfig
from .hub import push_folder, resolve_folder
from .significance.prior import DiagonalSignificance, KFACSignificance, PriorSignificance

if TYPE_CHECKING:
    from .model import SRFTModel
    from .regularizer.engine import SRFTEngine

CONFIG_NAME = "srft_config.json"
SIGNIFICANCE_NAME = "significance.safetensors"
MODEL_CARD_NAME = "README.md"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

#: Keys of ``srft_config.json`` besides the SRFTConfig fields.
METADATA_KEYS = ("format_version", "library_name", "library_version", "base_model", "calibration", "normalizer",
                 "dtypes", "fingerprint", "entries", "transfer_state")
#: The SRFTConfig fields, stored at the top level of ``srft_config.json``.
CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(SRFTConfig))
#: Keys a checkpoint cannot be read without.
REQUIRED_KEYS = ("format_version", "prior_estimator", "fingerprint", "entries")
#: Config fields that describe how the stored significance was computed; ``from_pretrained`` cannot override them.
ESTIMATION_FIELDS = ("prior_estimator", "prior_rank", "prior_energy", "calibration_objective", "factor_dtype",
                     "factor_token_stride", "damping")

PathLike = Union[str, Path]


# --- what is stored -------------------------------------------------------------------------------------------------
def fingerprint(items: Iterable[tuple[str, Sequence[int], str]]) -> str:
    """sha256 over the sorted (parameter name, shape, kind) triples of the regularized parameters.

    Example:
        >>> fingerprint([("w", (2, 3), "kfac")]) == fingerprint([("w", [2, 3], "kfac")])
        True
    """
    canonical = sorted([name, [int(s) for s in shape], kind] for name, shape, kind in items)
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).hexdigest()


def model_fingerprint(engine: SRFTEngine) -> str:
    return fingerprint((t.name, t.param.shape, t.kind) for t in engine.targets)


def describe_base_model(model: nn.Module) -> dict[str, Optional[str]]:
    """Name, revision and class of a base model: a Hugging Face ``name_or_path``, a timm ``pretrained_cfg``, else the
    class name."""
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    revision = getattr(config, "_commit_hash", None)
    cfg = getattr(model, "pretrained_cfg", None)
    if not name and isinstance(cfg, dict):
        tag = f"{cfg.get('architecture')}.{cfg['tag']}" if cfg.get("architecture") and cfg.get("tag") else None
        name = cfg.get("hf_hub_id") or tag or cfg.get("architecture")
    return {"name": str(name) if name else type(model).__name__, "revision": revision, "class": type(model).__name__}


def entry_metadata(entry: KFACSignificance | DiagonalSignificance, shape: Sequence[int]) -> dict[str, Any]:
    """The JSON record of one parameter: its kind and shape, and rank + retained energy (K-FAC) or source (diagonal)."""
    if isinstance(entry, KFACSignificance):
        return {"kind": "kfac", "shape": list(shape), "rank": list(entry.rank),
                "retained_energy": float(entry.retained_energy)}
    return {"kind": "diagonal", "shape": list(shape), "source": entry.source}


def describe_entries(entries: dict[str, dict[str, Any]]) -> str:
    """'<tensors> tensors, <elements> elements (<k> kfac, <d> diagonal)' for the per-parameter JSON records."""
    kfac = sum(e["kind"] == "kfac" for e in entries.values())
    elements = sum(math.prod(e["shape"]) for e in entries.values())
    return f"{len(entries)} tensors, {elements:,d} elements ({kfac} kfac, {len(entries) - kfac} diagonal)"


@dataclass
class SignificanceCheckpoint:
    """A significance checkpoint read from a folder and checked for consistency, not yet against a model.

    ``metadata`` is the JSON as read, ``prior`` the normalized significance, ``step`` and ``transfer_v`` the optional
    transfer state (``None`` / empty when not stored).
    """

    folder: Path
    config: SRFTConfig
    metadata: dict[str, Any]
    prior: PriorSignificance
    step: Optional[int] = None
    transfer_v: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


# --- writing --------------------------------------------------------------------------------------------------------
def save_significance(srft: SRFTModel, save_directory: PathLike, include_transfer_state: bool = False,
                      repo_id: Optional[str] = None) -> Path:
    """Write ``srft_config.json``, ``significance.safetensors`` and ``README.md`` into ``save_directory``."""
    from . import __version__

    engine = srft._engine
    prior = engine.prior
    if prior is None:
        raise RuntimeError("no prior significance to save: call srft.estimate_prior(...) or load one first")
    shapes = {t.name: tuple(t.param.shape) for t in engine.targets}
    entries = {name: prior.entries[name] for name in engine.names}
    tensors = PriorSignificance(entries).tensors()
    transfer_state = None
    if include_transfer_state:
        state = engine.state_dict()
        tensors["transfer.step"] = torch.tensor(state["step"], dtype=torch.int64)
        v = state["tensors"].get("transfer.v")
        if v is not None:
            views = engine.layout.views(v)
            tensors.update({f"transfer.v.{name}": view.clone() for name, view in zip(engine.names, views)})
        transfer_state = {"has_v": v is not None, "statistics": state["statistics"]}
    meta = {
        **srft.srft_config.to_dict(),
        "format_version": FORMAT_VERSION,
        "library_name": "srft-peft",
        "library_version": __version__,
        "base_model": describe_base_model(srft.base_model),
        "calibration": {"num_examples": prior.num_examples, "num_batches": prior.num_batches,
                        "objective": prior.objective},
        "normalizer": prior.normalizer,
        "dtypes": {"parameters": str(engine.params[0].dtype).removeprefix("torch."),
                   "significance": str(next(iter(tensors.values())).dtype).removeprefix("torch.")},
        "fingerprint": fingerprint((n, shapes[n], e.kind) for n, e in entries.items()),
        "entries": {name: entry_metadata(e, shapes[name]) for name, e in entries.items()},
        "transfer_state": transfer_state,
    }
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, str(folder / SIGNIFICANCE_NAME),
              metadata={"format": "pt", "srft_format_version": str(FORMAT_VERSION)})
    (folder / MODEL_CARD_NAME).write_text(model_card(meta, repo_id))
    return folder


def model_card(meta: dict[str, Any], repo_id: Optional[str] = None) -> str:
    """A README.md with YAML front matter (``library_name: srft-peft``, tags) describing how the prior was computed."""
    base, entries, cal, transfer = meta["base_model"], meta["entries"], meta["calibration"], meta["transfer_state"]
    source = repo_id or "path/to/this/folder"
    tags = "".join(f"- {t}\n" for t in ("srft", "significance", "fisher", "tracking", "rgb-x"))
    is_hub_id = "/" in base["name"] and not Path(base["name"]).is_absolute()
    base_line = f"base_model: {base['name']}\n" if is_hub_id else ""
    revision = f" (revision `{base['revision']}`)" if base.get("revision") else ""
    rows = {
        "base model": f"`{base['name']}`{revision}, class `{base['class']}`",
        "estimator": f"`{meta['prior_estimator']}` (prior_rank={meta['prior_rank']}, prior_energy={meta['prior_energy']}, "
                     f"factor_dtype={meta['factor_dtype']}, factor_token_stride={meta.get('factor_token_stride', 1)})",
        "calibration": f"{cal['num_examples']} examples in {cal['num_batches']} batches, objective `{cal['objective']}`",
        "normalizer c": f"{meta['normalizer']:.6g}",
        "regularized parameters": describe_entries(entries),
        "fingerprint": f"`{meta['fingerprint']}`",
        "transfer state": "included (step and squared-gradient EMA v)" if transfer else "not included",
        "library": f"srft-peft {meta['library_version']} (checkpoint format {meta['format_version']})",
    }
    table = "\n".join(f"| {k} | {v} |" for k, v in rows.items())
    return f"""---
library_name: srft-peft
tags:
{tags}{base_line}---

# SRFT prior significance of `{base['name']}`

The **prior significance** of `{base['name']}` for Significance-Regularized Fine-Tuning (SRFT): Fisher-information
curvature at the pretrained weights, measured once on pretraining-domain (RGB) data, that tells a fine-tune (e.g. on
RGB-T, RGB-D or RGB-E data) which directions of the weights to keep.

## How it was computed

| | |
|---|---|
{table}

## How to load it

```python
from srft_peft import SRFTModel

model = ...  # the same base model, with its pretrained weights (they become the anchor theta0)
srft = SRFTModel.from_pretrained(model, "{source}", total_steps=10_000)  # config fields may be overridden
```

Inspect it without a model: `srft-peft inspect {source}`.

## Files

- `srft_config.json`: the SRFT configuration and the metadata above.
- `significance.safetensors`: U, V, omega per K-FAC matrix, the diagonal Fisher of the other tensors and, when
  included, the transfer state.

Neither the model weights nor the anchor theta0 are stored: theta0 is the base model's weights when this is loaded.
"""


# --- reading --------------------------------------------------------------------------------------------------------
def read_config(folder: PathLike) -> tuple[dict[str, Any], SRFTConfig]:
    """``srft_config.json`` of ``folder``: the JSON as read and its validated :class:`SRFTConfig`.

    Unknown keys (a newer version) are ignored with a warning; a missing required key, malformed JSON or a field out
    of range raises ``ValueError`` naming the file.
    """
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: not a folder written by SRFTModel.save_pretrained")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: malformed JSON: {e}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path}: required key {missing[0]!r} is missing")
    version = meta["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {version} is newer than this srft-peft reads ({FORMAT_VERSION}); "
                         "upgrade srft-peft")
    unknown = sorted(set(meta) - CONFIG_FIELDS - set(METADATA_KEYS))
    if unknown:
        warnings.warn(f"{path}: ignoring unknown keys {unknown} (written by a newer srft-peft "
                      f"{meta.get('library_version', '?')}?)", stacklevel=3)
    try:
        config = SRFTConfig.from_dict({k: v for k, v in meta.items() if k in CONFIG_FIELDS})
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from e
    return meta, config


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        pickles = sorted(p.name for p in path.parent.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(f"{path.parent} holds {pickles} but no {SIGNIFICANCE_NAME}: pickle files are not loaded "
                             "because unpickling can execute arbitrary code; save significance with safetensors")
        raise FileNotFoundError(f"{str(path)!r} not found: not a folder written by SRFTModel.save_pretrained")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e


def _check_entry(path: Path, name: str, entry: Any) -> None:
    """Raise unless ``entry`` is a well-formed per-parameter record."""
    def bad(why: str) -> ValueError:
        return ValueError(f"{path}: entry of parameter {name!r} {why}: {entry!r}")

    if not isinstance(entry, dict) or entry.get("kind") not in ("kfac", "diagonal"):
        raise bad("needs kind 'kfac' or 'diagonal'")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise bad("needs a shape (list of positive integers)")
    if entry["kind"] == "kfac":
        rank = entry.get("rank")
        dims = (shape[0], math.prod(shape[1:])) if len(shape) >= 2 else None
        if dims is None or not isinstance(rank, list) or len(rank) != 2 or not all(
                isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= d for k, d in zip(rank, dims)):
            raise bad("needs a matrix shape and rank [k_out, k_in] within it")
        energy = entry.get("retained_energy")
        if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0.0 <= energy <= 1.0:
            raise bad("needs retained_energy in [0, 1]")
    elif entry.get("source") not in ("per_example", "per_batch"):
        raise bad("needs source 'per_example' or 'per_batch'")


def _expected_tensors(entries: dict[str, dict], transfer: Optional[dict]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor ``significance.safetensors`` must hold: its name -> (parameter, shape), in parameter order."""
    expected: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, e in entries.items():
        shape = tuple(e["shape"])
        if e["kind"] == "kfac":
            (k_out, k_in), m, n = e["rank"], shape[0], math.prod(shape[1:])
            expected.update({f"{name}.U": (name, (m, k_out)), f"{name}.V": (name, (n, k_in)),
                             f"{name}.omega": (name, (k_out, k_in))})
        else:
            expected[f"{name}.fisher"] = (name, shape)
    if transfer is not None:
        expected["transfer.step"] = ("transfer state", ())
        if transfer.get("has_v"):
            expected.update({f"transfer.v.{name}": (name, tuple(e["shape"])) for name, e in entries.items()})
    return expected


def read_checkpoint(folder: PathLike) -> SignificanceCheckpoint:
    """Read and validate a local checkpoint folder (no model needed). Raises naming the file and the first offending
    parameter; pickle files are never opened."""
    folder = Path(folder)
    meta, config = read_config(folder)
    path = folder / CONFIG_NAME
    entries = meta["entries"]
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"{path}: 'entries' must be a non-empty object of per-parameter records")
    for name, entry in entries.items():
        _check_entry(path, name, entry)
    if meta["fingerprint"] != fingerprint((n, e["shape"], e["kind"]) for n, e in entries.items()):
        raise ValueError(f"{path}: the fingerprint does not match the entries (the file was edited or corrupted)")
    transfer = meta.get("transfer_state")
    if transfer is not None and not isinstance(transfer, dict):
        raise ValueError(f"{path}: 'transfer_state' must be null or an object, got {transfer!r}")

    tensors_path = folder / SIGNIFICANCE_NAME
    tensors = _read_tensors(tensors_path)
    expected = _expected_tensors(entries, transfer)
    for key, (owner, shape) in expected.items():
        if key not in tensors:
            raise ValueError(f"{tensors_path}: missing tensor {key!r} of parameter {owner!r}")
        t = tensors[key]
        if tuple(t.shape) != shape:
            raise ValueError(f"{tensors_path}: tensor {key!r} of parameter {owner!r} has shape {tuple(t.shape)}, "
                             f"expected {shape}")
        if key == "transfer.step":
            if t.is_floating_point() or t.is_complex() or int(t) < 0:
                raise ValueError(f"{tensors_path}: 'transfer.step' must be a non-negative integer, got {t!r}")
        elif not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise ValueError(f"{tensors_path}: tensor {key!r} of parameter {owner!r} must be finite floating point "
                             f"(dtype {t.dtype})")
    extra = [k for k in tensors if k not in expected]
    if extra:
        raise ValueError(f"{tensors_path}: unexpected tensor {extra[0]!r} (not described by the entries of "
                         f"{CONFIG_NAME})")

    prior_entries: dict[str, KFACSignificance | DiagonalSignificance] = {}
    for name, e in entries.items():
        if e["kind"] == "kfac":
            prior_entries[name] = KFACSignificance(name, tensors[f"{name}.U"], tensors[f"{name}.V"],
                                                   tensors[f"{name}.omega"], float(e["retained_energy"]))
        else:
            prior_entries[name] = DiagonalSignificance(name, tensors[f"{name}.fisher"], e["source"])
    cal = meta.get("calibration") or {}
    prior = PriorSignificance(prior_entries, normalizer=float(meta.get("normalizer", 1.0)),
                              num_examples=int(cal.get("num_examples", 0)), num_batches=int(cal.get("num_batches", 0)),
                              objective=str(cal.get("objective", "")), normalized=True)
    step = int(tensors["transfer.step"]) if transfer is not None else None
    v = {name: tensors[f"transfer.v.{name}"] for name in entries if f"transfer.v.{name}" in tensors}
    return SignificanceCheckpoint(folder, config, meta, prior, step, v)


def load_significance_checkpoint(dir_or_repo_id: PathLike, revision: Optional[str] = None, *,
                                 cache_dir: Optional[PathLike] = None,
                                 token: Union[str, bool, None] = None) -> SignificanceCheckpoint:
    """Read a checkpoint from a local folder, else from the Hub (cache only in offline mode), without a model.

    Example:
        >>> ckpt = load_significance_checkpoint("path/to/folder")  # doctest: +SKIP
        >>> ckpt.metadata["fingerprint"], len(ckpt.prior.entries)  # doctest: +SKIP
    """
    folder = resolve_folder(dir_or_repo_id, [CONFIG_NAME, SIGNIFICANCE_NAME], revision, cache_dir=cache_dir,
                            token=token)
    return read_checkpoint(folder)


def check_matches(checkpoint: SignificanceCheckpoint, engine: SRFTEngine) -> None:
    """Raise ``ValueError`` naming the first parameter in which the checkpoint and the model's regularized parameters
    differ (name, shape or kind); passes when the fingerprints agree."""
    saved = checkpoint.metadata["fingerprint"]
    here = model_fingerprint(engine)
    if saved == here:
        return
    where = f"{checkpoint.folder / CONFIG_NAME} does not match this model (fingerprint {saved[:12]}... here {here[:12]}...)"
    entries = checkpoint.metadata["entries"]
    for t in engine.targets:
        e = entries.get(t.name)
        if e is None:
            raise ValueError(f"{where}: parameter {t.name!r} is regularized here but has no significance in the "
                             "checkpoint (another architecture, or other target_modules?)")
        if tuple(e["shape"]) != tuple(t.param.shape):
            raise ValueError(f"{where}: parameter {t.name!r} has shape {tuple(t.param.shape)} here and "
                             f"{tuple(e['shape'])} in the checkpoint")
        if e["kind"] != t.kind:
            raise ValueError(f"{where}: parameter {t.name!r} is {t.kind!r} here and {e['kind']!r} in the checkpoint")
    names = set(engine.names)
    extra = next((n for n in entries if n not in names), "?")
    raise ValueError(f"{where}: parameter {extra!r} of the checkpoint is not regularized by this model")


def apply_checkpoint(srft: SRFTModel, checkpoint: SignificanceCheckpoint) -> PriorSignificance:
    """Validate ``checkpoint`` against ``srft``, then set its prior (anchored at the current weights) and transfer
    state. Nothing is changed when validation fails."""
    engine = srft._engine
    check_matches(checkpoint, engine)
    prior = dataclasses.replace(checkpoint.prior, entries={n: checkpoint.prior.entries[n] for n in engine.names})
    engine.set_prior(prior)
    if checkpoint.step is not None:
        tensors = {}
        if checkpoint.transfer_v:
            flat = engine.layout.new_buffer()
            torch._foreach_copy_(engine.layout.views(flat), [checkpoint.transfer_v[n] for n in engine.names])
            tensors["transfer.v"] = flat
        engine.load_state_dict({"step": checkpoint.step, "tensors": tensors})
    return prior


# --- the methods SRFTModel gets -------------------------------------------------------------------------------------
class SignificanceCheckpointMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``load_significance`` / ``push_to_hub`` for :class:`SRFTModel`."""

    def save_pretrained(self, save_directory: PathLike, include_transfer_state: bool = False,
                        is_main_process: bool = True) -> None:
        """Write the prior significance (and, optionally, the transfer state v and step) to ``save_directory``; not the
        model weights (``srft.unload().save_pretrained(...)`` or the base library's own saving write those). Other
        processes than the main one (``is_main_process=False``, as in peft) write nothing.

        Example:
            >>> srft.save_pretrained("ostrack256-rgb-significance")  # doctest: +SKIP
        """
        if is_main_process:
            save_significance(self, save_directory, include_transfer_state)

    @classmethod
    def from_pretrained(cls, model: nn.Module, dir_or_repo_id: PathLike, revision: Optional[str] = None, *,
                        cache_dir: Optional[PathLike] = None, token: Union[str, bool, None] = None,
                        **config_overrides: Any) -> SRFTModel:
        """Wrap ``model`` with a saved config (``config_overrides`` applied) and load its significance; the anchor
        theta0 is ``model``'s current weights. Fields that define the significance (:data:`ESTIMATION_FIELDS`) cannot
        be overridden.

        Example:
            >>> srft = SRFTModel.from_pretrained(tracker, "user/ostrack256-rgb", total_steps=20_000)  # doctest: +SKIP
        """
        if isinstance(model, cls):
            raise ValueError("the model is already an SRFTModel; use srft.load_significance(...)")
        checkpoint = load_significance_checkpoint(dir_or_repo_id, revision, cache_dir=cache_dir, token=token)
        config = checkpoint.config
        for key, value in config_overrides.items():
            if key not in CONFIG_FIELDS:
                raise ValueError(f"unknown SRFTConfig field {key!r} in from_pretrained overrides")
            if key in ESTIMATION_FIELDS and value != getattr(config, key):
                raise ValueError(f"{key} describes how the saved significance was computed ({getattr(config, key)!r}) "
                                 f"and cannot be overridden with {value!r}; estimate a new prior instead")
        srft = cls(model, dataclasses.replace(config, **config_overrides))
        apply_checkpoint(srft, checkpoint)
        return srft

    def load_significance(self, dir_or_repo_id: PathLike, revision: Optional[str] = None, *,
                          cache_dir: Optional[PathLike] = None,
                          token: Union[str, bool, None] = None) -> PriorSignificance:
        """Load a saved prior significance into this model, anchored at the current weights (strict and atomic).

        Example:
            >>> prior = srft.load_significance("ostrack256-rgb-significance")  # doctest: +SKIP
        """
        checkpoint = load_significance_checkpoint(dir_or_repo_id, revision, cache_dir=cache_dir, token=token)
        return apply_checkpoint(self, checkpoint)

    def push_to_hub(self, repo_id: str, private: Optional[bool] = None,
                    commit_message: str = "Upload SRFT significance", token: Union[str, bool, None] = None,
                    include_transfer_state: bool = False) -> Any:
        """Create ``repo_id`` if needed and upload what ``save_pretrained`` writes; returns the commit info.

        Example:
            >>> srft.push_to_hub("user/ostrack256-rgb-significance").commit_url  # doctest: +SKIP
        """
        return push_folder(repo_id, lambda folder: save_significance(self, folder, include_transfer_state, repo_id),
                           private=private, commit_message=commit_message, token=token)
