"""Significance checkpoints: write, read, validate and load the prior significance of a pretrained model.

A checkpoint is a folder (or a Hugging Face Hub repo) with three files:

* ``srft_config.json``: every :class:`SRFTConfig` field plus the metadata in :data:`METADATA_KEYS` (format and library
  version, base model, calibration, normalizer c, dtypes, a fingerprint of the regularized parameters, per-parameter
  entries, whether a transfer state is included, the sha256 of the tensors file);
* ``significance.safetensors``: ``<param>.U``, ``<param>.V``, ``<param>.omega`` per K-FAC matrix, ``<param>.fisher``
  per diagonal tensor and, optionally, ``transfer.step`` and ``transfer.v.<param>``;
* ``README.md``: a model card (a user's own README.md is never overwritten).

Not the model weights and not the anchor theta0: the anchor is the base model's weights when the checkpoint is loaded.
Tensors are read only through safetensors, never unpickled. Saving is atomic (a temporary folder, then renames).
Loading is strict and atomic: everything is validated before anything is set. The model card is ``srft_peft.card``'s;
training (resume) states are the engine's own (``srft_peft.regularizer.state``).

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
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import atomic
from ._version import __version__
from .card import MODEL_CARD_NAME, is_generated_card, model_card
from .config import SRFTConfig
from .hub import resolve_folder
from .regularizer.state import TransferSnapshot, is_count
from .significance.prior import DIAGONAL_SOURCES, DiagonalSignificance, KFACSignificance, PriorSignificance
from .targeting import Target, calibration_targets
from .weights import WEIGHTS_NAME

CONFIG_NAME = "srft_config.json"
#: The tensors file of format-1 checkpoints (read, never written): a fixed name, replaced in place.
SIGNIFICANCE_NAME = "significance.safetensors"
#: The tensors file since format 2: named by its content, ``significance-<first 16 hex of its sha256>.safetensors``,
#: and referenced by ``srft_config.json`` (key ``significance_file``), whose rename commits a save.
SIGNIFICANCE_PATTERN = re.compile(r"significance-[0-9a-f]{16}\.safetensors")
#: A glob matching the tensors files of every format (for deleting a previous save's on the Hub).
TENSORS_FILE_GLOB = "significance*.safetensors"
FORMAT_VERSION = 2
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

#: Keys of ``srft_config.json`` besides the SRFTConfig fields.
METADATA_KEYS = ("format_version", "library_name", "library_version", "base_model", "calibration", "normalizer",
                 "dtypes", "fingerprint", "entries", "transfer_state", "significance_file", "significance_sha256",
                 "weights_file")
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


def describe_base_model(model: nn.Module) -> dict[str, Optional[str]]:
    """Name, revision and class of a base model: a Hugging Face ``name_or_path``, a timm ``pretrained_cfg``, else the
    class name."""
    config = getattr(model, "config", None)
    name = getattr(config, "name_or_path", None) or getattr(model, "name_or_path", None)
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

    @property
    def tensors_path(self) -> Path:
        """The tensors file the config names (``significance-<sha>.safetensors``; format 1: the fixed name)."""
        return self.folder / self.metadata.get("significance_file", SIGNIFICANCE_NAME)

    @property
    def weights_path(self) -> Optional[Path]:
        """The fine-tuned weights saved with the significance (``SRFTModel.save_pretrained(dir, state_dict=...)``,
        ``SRFTTrainer.save_model``), or ``None``."""
        name = self.metadata.get("weights_file")
        return self.folder / name if name else None


# --- writing --------------------------------------------------------------------------------------------------------
def save_significance(prior: Optional[PriorSignificance], config: SRFTConfig, targets: Sequence[Target],
                      base_model: nn.Module, save_directory: PathLike, transfer: Optional[TransferSnapshot] = None,
                      repo_id: Optional[str] = None, weights_file: Optional[str] = None) -> Path:
    """Write ``srft_config.json``, ``significance-<sha>.safetensors`` and ``README.md`` of ``prior`` (the significance
    of the regularized ``targets``), ``config`` and, optionally, the ``transfer`` state into ``save_directory``;
    ``base_model`` is described in the metadata, ``weights_file`` names fine-tuned weights already written there."""
    if prior is None:
        raise RuntimeError("no prior significance to save: call srft.estimate_prior(...) or load one first")
    keyed = calibration_targets(list(targets))
    shapes = {t.name: tuple(t.param.shape) for t in keyed}
    entries = {name: prior.entries[name] for name in shapes}
    tensors = PriorSignificance(entries).tensors()
    state = prior.to_state()
    transfer_state = None
    if transfer is not None:
        tensors["transfer.step"] = torch.tensor(transfer.step, dtype=torch.int64)
        if transfer.v is not None:
            tensors.update({f"transfer.v.{name}": v for name, v in transfer.v.items()})
        transfer_state = {"has_v": transfer.v is not None, "statistics": transfer.statistics}
        if transfer.v is not None and list(transfer.v) != list(shapes):  # LoRA: v per factor, the prior per weight
            transfer_state["v_shapes"] = {t.name: list(t.param.shape) for t in targets}
    meta = {
        **config.to_dict(),
        "format_version": FORMAT_VERSION,
        "library_name": "srft-peft",
        "library_version": __version__,
        "base_model": describe_base_model(base_model),
        "calibration": {k: state[k] for k in ("num_examples", "num_batches", "objective")},
        "normalizer": state["normalizer"],
        "dtypes": {"parameters": str(targets[0].param.dtype).removeprefix("torch."),
                   "significance": str(next(iter(tensors.values())).dtype).removeprefix("torch.")},
        "fingerprint": fingerprint((n, shapes[n], e.kind) for n, e in entries.items()),
        "entries": {name: entry_metadata(e, shapes[name]) for name, e in entries.items()},
        "transfer_state": transfer_state,
        "weights_file": weights_file,
    }
    tensors = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}

    folder = Path(save_directory)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"cannot save the significance checkpoint to {str(folder)!r}: it is a file")
    readme = folder / MODEL_CARD_NAME
    write_card = not readme.exists() or is_generated_card(readme)
    if not write_card:
        warnings.warn(f"{str(readme)!r} was not written by srft-peft: it is kept and no model card is written",
                      stacklevel=3)
    card = (lambda name: model_card(meta, repo_id, name, weights_file)) if write_card else None
    write_checkpoint(folder, tensors, meta, card)
    return folder


def write_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                     card: Optional[Callable[[str], str]] = None) -> None:
    """Write ``tensors`` and the config ``meta`` (and ``card(tensors file name)`` as README.md) into ``folder`` so that
    a crash at any moment leaves the old checkpoint or the new one, never a mix.

    In an existing folder: the tensors go to a new content-named file ``significance-<sha>.safetensors``, then the
    config that names it replaces ``srft_config.json`` (the one commit point: readers follow the config), then the
    model card, and only then are the tensors files no config names any more removed (the previous save's, a format-1
    ``significance.safetensors``, those of a killed save). A new folder is filled as a temporary folder beside it and
    renamed into place. Temporary files of killed saves are removed first (:func:`srft_peft.atomic.remove_stale`);
    files that are not the checkpoint's are never touched. A failure before the commit (a full disk) raises
    ``OSError`` naming ``folder`` and leaves it as it was.
    """
    where = f"cannot save the significance checkpoint to {str(folder)!r}"
    created = not folder.exists()
    try:
        folder.absolute().parent.mkdir(parents=True, exist_ok=True)
        atomic.remove_stale(folder)
        target = folder.absolute().parent / atomic.temp_name(f".{folder.name}") if created else folder
        target.mkdir(exist_ok=not created)
    except OSError as e:
        raise OSError(f"{where}: {e}") from e
    tensors_path: Optional[Path] = None
    existed = False
    try:
        def tensors_name(path: Path) -> str:  # content-named: the config, renamed last, picks the file
            nonlocal tensors_path, existed
            meta["significance_sha256"] = file_sha256(path)
            meta["significance_file"] = f"significance-{meta['significance_sha256'][:16]}.safetensors"
            tensors_path = target / meta["significance_file"]
            existed = tensors_path.exists()
            return meta["significance_file"]

        atomic.write_file(target, tensors_name, lambda path: save_file(
            tensors, str(path), metadata={"format": "pt"}))  # one key: safetensors writes several in random order
        atomic.write_file(target, CONFIG_NAME,
                          lambda path: path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8"))
    except (OSError, SafetensorError) as e:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        elif tensors_path is not None and not existed:
            tensors_path.unlink(missing_ok=True)
        raise OSError(f"{where} (nothing there was changed): {e}") from e
    try:
        atomic.fsync_path(target)
        if card is not None:
            atomic.write_file(target, MODEL_CARD_NAME, lambda path: path.write_text(card(tensors_path.name),
                                                                                   encoding="utf-8"))
        for old in target.iterdir():
            if old.name != tensors_path.name and is_tensors_file_name(old.name):
                old.unlink(missing_ok=True)
        if created:
            os.replace(target, folder)
            atomic.fsync_path(folder.absolute().parent)
    except OSError as e:
        if created:
            shutil.rmtree(target, ignore_errors=True)
            raise OSError(f"{where} (nothing there was changed): {e}") from e
        raise OSError(f"{where}: the checkpoint was saved, but tidying up after it failed: {e}") from e


def tensors_file_name(path: Path, meta: dict[str, Any]) -> str:
    """The tensors file the config ``meta`` (read from ``path``) names: its ``significance_file`` (format 2), else the
    fixed :data:`SIGNIFICANCE_NAME` (format 1). Raises ``ValueError`` for anything but such a plain file name."""
    name = meta.get("significance_file", SIGNIFICANCE_NAME)
    if not isinstance(name, str) or not is_tensors_file_name(name):
        raise ValueError(f"{path}: significance_file must be a file name significance-<16 hex digits>.safetensors, "
                         f"got {name!r}")
    return name


def significance_path(folder: PathLike) -> Path:
    """The tensors file of the checkpoint in ``folder``: the one its ``srft_config.json`` names.

    Example:
        >>> significance_path("path/to/folder").name  # doctest: +SKIP
        'significance-3f6c2a9e81b04d7c.safetensors'
    """
    folder = Path(folder)
    return folder / tensors_file_name(folder / CONFIG_NAME, read_config(folder)[0])


def is_tensors_file_name(name: str) -> bool:
    """Whether ``name`` is a checkpoint's tensors file: format 2's content-named one or format 1's fixed name."""
    return name == SIGNIFICANCE_NAME or SIGNIFICANCE_PATTERN.fullmatch(name) is not None


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (hex), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
            raise ValueError(f"{path.parent} holds {pickles} but no {path.name}: pickle files are not loaded "
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
    elif entry.get("source") not in DIAGONAL_SOURCES:
        raise bad(f"needs a source in {list(DIAGONAL_SOURCES)}")


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in value)


def _check_metadata(path: Path, meta: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming ``path``, the key and its value unless every metadata field has the right type."""
    def check(key: str, ok: bool, expected: str) -> None:
        if not ok:
            raise ValueError(f"{path}: {key} must be {expected}, got {meta_value(key)!r}")

    def meta_value(key: str) -> Any:
        value: Any = meta
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    normalizer = meta.get("normalizer", 1.0)
    check("normalizer", isinstance(normalizer, (int, float)) and not isinstance(normalizer, bool)
          and math.isfinite(normalizer) and normalizer > 0, "a finite positive number")
    check("library_version", isinstance(meta.get("library_version", ""), str), "a string")
    check("weights_file", meta.get("weights_file") in (None, WEIGHTS_NAME), f"{WEIGHTS_NAME!r} or null")
    digest = meta.get("significance_sha256")
    check("significance_sha256", digest is None or (isinstance(digest, str) and len(digest) == 64
                                                    and all(c in "0123456789abcdef" for c in digest)),
          "a sha256 hex digest or null")
    cal, base, dtypes = meta.get("calibration"), meta.get("base_model"), meta.get("dtypes")
    check("calibration", cal is None or isinstance(cal, dict), "an object or null")
    for key in ("num_examples", "num_batches"):
        check(f"calibration.{key}", is_count((cal or {}).get(key, 0)), "a non-negative integer")
    check("calibration.objective", isinstance((cal or {}).get("objective", ""), str), "a string")
    check("base_model", base is None or isinstance(base, dict), "an object or null")
    for key in ("name", "class", "revision"):
        value = (base or {}).get(key)
        check(f"base_model.{key}", value is None or isinstance(value, str), "a string or null")
    check("dtypes", dtypes is None or (isinstance(dtypes, dict) and all(isinstance(v, str) for v in dtypes.values())),
          "an object of strings or null")
    transfer = meta.get("transfer_state")
    check("transfer_state", transfer is None or isinstance(transfer, dict), "an object or null")
    if transfer is not None:
        check("transfer_state.has_v", isinstance(transfer.get("has_v", False), bool), "true or false")
        check("transfer_state.statistics", transfer.get("statistics") in (None, "own", "optimizer"),
              "'own', 'optimizer' or null")
        shapes = transfer.get("v_shapes")
        check("transfer_state.v_shapes", shapes is None or (isinstance(shapes, dict) and shapes and all(
            _is_shape(v) for v in shapes.values())), "an object of parameter shapes or null")


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
            shapes = transfer.get("v_shapes") or {name: e["shape"] for name, e in entries.items()}
            expected.update({f"transfer.v.{name}": (name, tuple(shape)) for name, shape in shapes.items()})
    return expected


def read_checkpoint(folder: PathLike) -> SignificanceCheckpoint:
    """Read and validate a local checkpoint folder (no model needed). Raises naming the file and the first offending
    parameter; pickle files are never opened."""
    folder = Path(folder)
    meta, config = read_config(folder)
    path = folder / CONFIG_NAME
    tensors_path = folder / tensors_file_name(path, meta)
    if not tensors_path.is_file():  # a save may have committed a new config since it was read: follow that one
        meta, config = read_config(folder)
        tensors_path = folder / tensors_file_name(path, meta)
    entries = meta["entries"]
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"{path}: 'entries' must be a non-empty object of per-parameter records")
    for name, entry in entries.items():
        _check_entry(path, name, entry)
    if meta["fingerprint"] != fingerprint((n, e["shape"], e["kind"]) for n, e in entries.items()):
        raise ValueError(f"{path}: the fingerprint does not match the entries (the file was edited or corrupted)")
    _check_metadata(path, meta)
    transfer = meta.get("transfer_state")
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
        elif key.startswith("transfer.v.") and (not t.is_floating_point() or not bool(torch.isfinite(t).all())):
            raise ValueError(f"{tensors_path}: tensor {key!r} of parameter {owner!r} must be finite floating point "
                             f"(dtype {t.dtype})")
        elif key.startswith("transfer.v.") and bool((t < 0).any()):
            raise ValueError(f"{tensors_path}: tensor {key!r} of parameter {owner!r} must be non-negative (a squared "
                             f"gradient), its minimum is {float(t.min()):.6g}")
    extra = [k for k in tensors if k not in expected]
    if extra:
        raise ValueError(f"{tensors_path}: unexpected tensor {extra[0]!r} (not described by the entries of "
                         f"{CONFIG_NAME})")
    cal = meta.get("calibration") or {}
    state = {"entries": {name: {**e, **{k: tensors[f"{name}.{k}"] for k in ("U", "V", "omega", "fisher")
                                        if f"{name}.{k}" in tensors}} for name, e in entries.items()},
             "normalizer": meta.get("normalizer", 1.0), "num_examples": cal.get("num_examples", 0),
             "num_batches": cal.get("num_batches", 0), "objective": cal.get("objective", ""), "normalized": True}
    prior = PriorSignificance.from_state(state, where=str(tensors_path))
    digest = meta.get("significance_sha256")
    if digest is not None and digest != file_sha256(tensors_path):
        raise ValueError(f"{tensors_path} is not the file {path} was saved with (sha256 differs): the folder mixes "
                         "two checkpoints or the file was replaced")
    step = int(tensors["transfer.step"]) if transfer is not None else None
    prefix = "transfer.v."
    v = {key[len(prefix):]: t for key, t in tensors.items() if key.startswith(prefix)}
    return SignificanceCheckpoint(folder, config, meta, prior, step, v)


def load_significance_checkpoint(dir_or_repo_id: PathLike, revision: Optional[str] = None, *,
                                 cache_dir: Optional[PathLike] = None,
                                 token: Union[str, bool, None] = None) -> SignificanceCheckpoint:
    """Read a checkpoint from a local folder, else from the Hub (cache only in offline mode), without a model.

    Example:
        >>> ckpt = load_significance_checkpoint("path/to/folder")  # doctest: +SKIP
        >>> ckpt.metadata["fingerprint"], len(ckpt.prior.entries)  # doctest: +SKIP
    """
    def tensors_file(folder: Path) -> list[str]:
        meta = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        meta = meta if isinstance(meta, dict) else {}
        weights = [WEIGHTS_NAME] if meta.get("weights_file") == WEIGHTS_NAME else []
        return [tensors_file_name(folder / CONFIG_NAME, meta)] + weights

    folder = resolve_folder(dir_or_repo_id, [CONFIG_NAME], revision, cache_dir=cache_dir, token=token,
                            then=tensors_file)
    return read_checkpoint(folder)


def check_matches(checkpoint: SignificanceCheckpoint, targets: Sequence[Target]) -> None:
    """Raise ``ValueError`` naming the first parameter in which the checkpoint and the regularized ``targets`` differ
    (name, shape or kind); passes when the fingerprints agree."""
    keyed = calibration_targets(list(targets))
    saved = checkpoint.metadata["fingerprint"]
    here = fingerprint((t.name, t.param.shape, t.kind) for t in keyed)
    if saved == here:
        names = [t.name for t in targets]
        missing = [n for n in names if n not in checkpoint.transfer_v]
        if checkpoint.transfer_v and (missing or len(checkpoint.transfer_v) != len(names)):
            extra = next((n for n in checkpoint.transfer_v if n not in names), None)
            raise ValueError(f"{checkpoint.tensors_path}: the transfer state v does not match this "
                             f"model's regularized parameters (missing {missing[:1]}, unexpected {extra!r})")
        for t in targets:
            v = checkpoint.transfer_v.get(t.name)
            if v is not None and tuple(v.shape) != tuple(t.param.shape):
                raise ValueError(f"{checkpoint.tensors_path}: tensor 'transfer.v.{t.name}' has shape "
                                 f"{tuple(v.shape)}, the parameter {tuple(t.param.shape)}")
        return
    where = f"{checkpoint.folder / CONFIG_NAME} does not match this model (fingerprint {saved[:12]}... here {here[:12]}...)"
    entries = checkpoint.metadata["entries"]
    for t in keyed:
        e = entries.get(t.name)
        if e is None:
            raise ValueError(f"{where}: parameter {t.name!r} is regularized here but has no significance in the "
                             "checkpoint (another architecture, or other target_modules?)")
        if tuple(e["shape"]) != tuple(t.param.shape):
            raise ValueError(f"{where}: parameter {t.name!r} has shape {tuple(t.param.shape)} here and "
                             f"{tuple(e['shape'])} in the checkpoint")
        if e["kind"] != t.kind:
            raise ValueError(f"{where}: parameter {t.name!r} is {t.kind!r} here and {e['kind']!r} in the checkpoint")
    names = {t.name for t in keyed}
    extra = next((n for n in entries if n not in names), "?")
    raise ValueError(f"{where}: parameter {extra!r} of the checkpoint is not regularized by this model")


def config_with_overrides(checkpoint: SignificanceCheckpoint, overrides: dict[str, Any]) -> SRFTConfig:
    """The checkpoint's config with ``overrides`` applied; raises ``ValueError`` naming an unknown field or a field
    that describes how the significance was computed (:data:`ESTIMATION_FIELDS`) given another value."""
    config = checkpoint.config
    for key, value in overrides.items():
        if key not in CONFIG_FIELDS:
            raise ValueError(f"unknown SRFTConfig field {key!r} in from_pretrained overrides")
        if key in ESTIMATION_FIELDS and value != getattr(config, key):
            raise ValueError(f"{key} describes how the saved significance was computed ({getattr(config, key)!r}) "
                             f"and cannot be overridden with {value!r}; estimate a new prior instead")
    return dataclasses.replace(config, **overrides)


def matching_prior(checkpoint: SignificanceCheckpoint, targets: Sequence[Target]) -> PriorSignificance:
    """The checkpoint's prior for the regularized ``targets`` (validated with :func:`check_matches`)."""
    check_matches(checkpoint, targets)
    return dataclasses.replace(checkpoint.prior, entries={t.name: checkpoint.prior.entries[t.name]
                                                          for t in calibration_targets(list(targets))})


def transfer_snapshot(checkpoint: SignificanceCheckpoint) -> Optional[TransferSnapshot]:
    """The transfer state stored in ``checkpoint`` (``None`` when it holds none)."""
    if checkpoint.step is None:
        return None
    statistics = (checkpoint.metadata.get("transfer_state") or {}).get("statistics")
    return TransferSnapshot(checkpoint.step, statistics, checkpoint.transfer_v or None)
