"""Sequence loaders for the RGB-X tracking benchmarks (LasHeR, RGBT234/210, GTOT, DepthTrack, VisEvent, FE108, COESOT).

Every loader returns a list of :class:`Sequence` objects with boxes as ``x, y, w, h`` (top-left, 0-based pixels,
``float64``) and ``NaN`` rows where the target is absent, whatever the on-disk convention was (``0,0,0,0``,
``x,y,0,0``, ``nan`` rows, an ``absent_label.txt`` file, corner format, CRLF line endings, ...).

Example:
    >>> from srft_peft.tracking.datasets import load_dataset
    >>> seqs = load_dataset("lasher", "/data/LasHeR/testingset")  # doctest: +SKIP
    >>> frame = seqs[0].load_frame(0)  # (H, W, 6) uint8: RGB then X as 3 channels  # doctest: +SKIP
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .protocols import PROTOCOLS, Protocol

__all__ = [
    "MODALITIES",
    "DATASETS",
    "DatasetRecord",
    "demo_datasets",
    "get_dataset",
    "register_dataset",
    "Sequence",
    "read_boxes",
    "read_flags",
    "decode_text",
    "depth_to_colormap",
    "load_dataset",
    "load_lasher",
    "load_rgbt234",
    "load_rgbt210",
    "load_gtot",
    "load_depthtrack",
    "load_visevent",
    "load_fe108",
    "load_coesot",
    "load_rgb_only",
]

MODALITIES = ("rgbt", "rgbd", "rgbe", "rgb")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_SEPARATORS = re.compile(r"[,\s]+")


# ----------------------------------------------------------------------------------------------------------------------
# Annotation parsing
# ----------------------------------------------------------------------------------------------------------------------
def decode_text(path: Path, data: bytes) -> str:
    """UTF-8 text (a BOM is dropped); anything else, e.g. UTF-16 or Latin-1, is an error naming the file."""
    hint = "re-save it as UTF-8 or ASCII"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data:
        raise ValueError(f"{path}: looks like UTF-16 text (byte-order mark or NUL bytes); {hint}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}, e.g. Latin-1); {hint}"
        ) from None


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty lines of a text file as ``(1-based line number, stripped text)``; CRLF, CR and a BOM are handled."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    text = decode_text(path, path.read_bytes())
    lines = text.splitlines()  # splits on \n, \r\n and \r
    # Trailing blank lines are common and harmless; blank lines inside the file are an error (frames would shift).
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            raise ValueError(f"{path}, line {number}: empty line inside the annotation file")
        out.append((number, stripped))
    return out


def read_boxes(path: str | Path, fmt: str = "xywh", absent_to_nan: bool = True) -> np.ndarray:
    """Read one box per line (comma, space or tab separated; CRLF tolerated) into an ``(N, 4)`` float64 array.

    Args:
        path: annotation file.
        fmt: ``"xywh"`` (top-left corner + size) or ``"corners"`` (``x1 y1 x2 y2``, converted with ``w = x2 - x1``,
            ``h = y2 - y1`` as the public GTOT/RGBT toolkits do). Lines with 8 numbers (VOT polygons) are
            converted to their axis-aligned bounding box.
        absent_to_nan: replace absent boxes (``nan`` values, ``w <= 0`` or ``h <= 0``, e.g. ``0,0,0,0`` or
            ``x,y,0,0``) by a row of ``NaN``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a line does not hold 4 (or 8) numbers; the message names the file and the line number.

    Example:
        >>> boxes = read_boxes("seq/groundtruth.txt")  # doctest: +SKIP
    """
    if fmt not in ("xywh", "corners"):
        raise ValueError(f"fmt must be 'xywh' or 'corners', got {fmt!r}")
    path = Path(path)
    rows = []
    for number, line in _read_lines(path):
        parts = [p for p in _SEPARATORS.split(line) if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"{path}, line {number}: expected 4 numbers separated by commas, spaces or tabs, got {line!r}"
            ) from None
        if len(values) == 8:  # VOT polygon -> axis-aligned box
            xs, ys = values[0::2], values[1::2]
            values = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        elif len(values) != 4:
            raise ValueError(f"{path}, line {number}: expected 4 numbers, got {len(values)} in {line!r}")
        elif fmt == "corners":
            x1, y1, x2, y2 = values
            values = [x1, y1, x2 - x1, y2 - y1]
        rows.append(values)
    boxes = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    if absent_to_nan:
        boxes[_absent_rows(boxes)] = np.nan
    return boxes


def read_flags(path: str | Path) -> np.ndarray:
    """Read one integer flag per line (e.g. VisEvent ``absent_label.txt``) into an ``(N,)`` int64 array.

    Raises:
        ValueError: a line is not a single integer; the message names the file and the line number.
    """
    path = Path(path)
    values = []
    for number, line in _read_lines(path):
        try:
            value = float(line)
        except ValueError:
            raise ValueError(f"{path}, line {number}: expected a single integer flag, got {line!r}") from None
        if value != int(value):
            raise ValueError(f"{path}, line {number}: expected an integer flag, got {line!r}")
        values.append(int(value))
    return np.asarray(values, dtype=np.int64)


def _absent_rows(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    return ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0)


def _natural_key(path: Path) -> list[Any]:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", path.name)]


def _list_images(folder: Path, exts: tuple[str, ...] = _IMAGE_EXTS) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"frame folder not found: {folder}")
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in exts and p.is_file()), key=_natural_key)


def _check_count(frames: list[Path], gt: np.ndarray, folder: Path, gt_file: Path) -> None:
    if len(frames) != len(gt):
        raise ValueError(
            f"{gt_file}: {len(gt)} annotation lines but {len(frames)} frames in {folder}; "
            "frame and ground-truth counts must match"
        )


def _numbered_frames(folder: Path, pattern: str, start: int, count: int, gt_file: Path) -> list[Path]:
    """``count`` frame paths ``folder / (pattern % (start + i))``; raise naming the first missing one."""
    frames = [folder / (pattern % (start + i)) for i in range(count)]
    for i, frame in enumerate(frames):
        if not frame.is_file():
            raise FileNotFoundError(f"missing frame file {frame} (frame {i}, annotated on {gt_file} line {i + 1})")
    return frames


# ----------------------------------------------------------------------------------------------------------------------
# Frame decoding
# ----------------------------------------------------------------------------------------------------------------------
def _jet(t: np.ndarray) -> np.ndarray:
    """Classic piecewise-linear JET colour map: ``t`` in [0, 1] -> RGB floats in [0, 1]."""
    t = np.asarray(t, dtype=np.float32)[..., None]
    centres = np.asarray([3.0, 2.0, 1.0], dtype=np.float32)  # red, green, blue
    return np.clip(1.5 - np.abs(4.0 * t - centres), 0.0, 1.0)


def depth_to_colormap(depth: np.ndarray, max_depth: float = 10000.0) -> np.ndarray:
    """Depth in millimetres -> ``(H, W, 3)`` uint8 JET image (the convention of ViPT/SDSTrack/OSTrack-D).

    The depth is clipped to ``min(3 * median, max_depth)``, min-max normalised to [0, 255] and colour-mapped.

    Example:
        >>> depth_to_colormap(np.full((2, 2), 1500, np.uint16)).shape
        (2, 2, 3)
    """
    depth = np.asarray(depth, dtype=np.float32)
    clip = min(float(np.median(depth)) * 3.0, float(max_depth))
    depth = np.minimum(depth, clip)
    lo, hi = float(depth.min()), float(depth.max())
    scaled = np.zeros_like(depth) if hi <= lo else (depth - lo) / (hi - lo)
    levels = np.round(scaled * 255.0) / 255.0  # quantise to 8 bits like the reference implementation
    return np.round(_jet(levels) * 255.0).astype(np.uint8)


def _jpeg_decoder() -> Callable[[Path], np.ndarray] | None:
    """JPEG decoding with torchvision's libjpeg-turbo (faster than PIL: no RGBX intermediate, the same pixels; see
    docs/tracking.md "The training data path"), or None without ``torchvision.io`` (PIL then decodes)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg, read_file
    except ImportError:  # torchvision comes with timm (the tracking extra); a release without image I/O falls back
        return None

    def decode(path: Path) -> np.ndarray:
        if not path.is_file():
            raise FileNotFoundError(path)
        with warnings.catch_warnings():  # torchvision >= 0.29 warns on every call that image I/O moves to TorchCodec
            warnings.simplefilter("ignore", DeprecationWarning)
            chw = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
        return chw.permute(1, 2, 0).numpy()  # libjpeg writes rows of RGB pixels: this view is contiguous (H, W, 3)

    return decode


_DECODE_JPEG = _jpeg_decoder()


def _read_rgb(path: Path) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB: JPEG through :func:`_jpeg_decoder` when torchvision is there, the rest
    (and JPEG without it) through PIL; an unreadable file is an error naming it."""
    path = Path(path)
    try:
        if _DECODE_JPEG is not None and path.suffix.lower() in (".jpg", ".jpeg"):
            return _DECODE_JPEG(path)
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"frame file not found: {path}") from None
    except (OSError, RuntimeError, ValueError) as err:  # truncated / not an image (PIL: OSError, torchvision: Runtime)
        raise ValueError(f"frame file {path} could not be decoded ({type(err).__name__}: {err})") from None


def _read_depth(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            depth = np.asarray(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"frame file not found: {path}") from None
    if depth.ndim == 3:  # a depth map saved as a colour image: take the first channel
        depth = depth[..., 0]
    return depth_to_colormap(depth)


# ----------------------------------------------------------------------------------------------------------------------
# Sequence
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class Sequence:
    """One tracking sequence: paired RGB / X frames and its ground truth.

    Example:
        >>> seq = Sequence("toy", [Path("0.jpg")], [], np.array([[1, 2, 3, 4]]), modality="rgb")
        >>> seq.visible.tolist(), seq.get_init_box().tolist()
        ([True], [1.0, 2.0, 3.0, 4.0])
    """

    name: str = field(metadata={"help": "Sequence name (the folder name)."})
    frames_rgb: list[Path] = field(metadata={"help": "RGB frame paths, one per frame."})
    frames_x: list[Path] = field(
        metadata={"help": "X-modality frame paths (thermal, 16-bit depth or event images); empty for 'rgb'."}
    )
    gt: np.ndarray = field(
        metadata={"help": "(N, 4) float64 boxes x, y, w, h (top-left, 0-based); NaN rows where the target is absent."}
    )
    visible: np.ndarray | None = field(
        default=None, metadata={"help": "(N,) bool target-present flags; derived from `gt` when None."}
    )
    gt_x: np.ndarray | None = field(
        default=None, metadata={"help": "Optional second ground truth in the X frames (e.g. RGBT234 infrared.txt)."}
    )
    modality: str = field(default="rgbt", metadata={"help": "One of 'rgbt', 'rgbd', 'rgbe', 'rgb'."})
    dataset: str = field(
        default="",
        metadata={"help": "The registered dataset (DATASETS) it comes from, whose protocol evaluate_results uses by "
                          "default; '' = no benchmark (the generic 'default' protocol)."},
    )
    init_box: np.ndarray | None = field(
        default=None,
        metadata={"help": "Box used to initialise trackers (e.g. GTOT init.txt); the first visible GT box when None."},
    )

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"Sequence {self.name!r}: modality must be one of {MODALITIES}, got {self.modality!r}")
        self.frames_rgb = [Path(p) for p in self.frames_rgb]
        self.frames_x = [Path(p) for p in self.frames_x]
        gt = np.asarray(self.gt, dtype=np.float64)
        if gt.ndim != 2 or gt.shape[1] != 4:
            raise ValueError(f"Sequence {self.name!r}: gt must have shape (N, 4), got {gt.shape}")
        gt = gt.copy()
        gt[_absent_rows(gt)] = np.nan
        self.gt = gt
        n = len(gt)
        if len(self.frames_rgb) != n:
            raise ValueError(f"Sequence {self.name!r}: {len(self.frames_rgb)} RGB frames but {n} ground-truth boxes")
        if self.modality == "rgb":
            if self.frames_x:
                raise ValueError(f"Sequence {self.name!r}: modality 'rgb' takes no X frames, got {len(self.frames_x)}")
        elif len(self.frames_x) != n:
            raise ValueError(f"Sequence {self.name!r}: {len(self.frames_x)} X frames but {n} ground-truth boxes")
        if self.visible is None:
            self.visible = np.isfinite(gt).all(axis=1)
        else:
            visible = np.asarray(self.visible, dtype=bool).reshape(-1)
            if visible.shape != (n,):
                raise ValueError(f"Sequence {self.name!r}: visible must have shape ({n},), got {visible.shape}")
            # A frame flagged present needs a usable box; a frame flagged absent has no box.
            self.visible = visible & np.isfinite(gt).all(axis=1)
            self.gt[~self.visible] = np.nan
        if self.gt_x is not None:
            gt_x = np.asarray(self.gt_x, dtype=np.float64).copy()
            if gt_x.shape != gt.shape:
                raise ValueError(f"Sequence {self.name!r}: gt_x shape {gt_x.shape} differs from gt shape {gt.shape}")
            gt_x[_absent_rows(gt_x)] = np.nan
            self.gt_x = gt_x
        if self.init_box is not None:
            self.init_box = np.asarray(self.init_box, dtype=np.float64).reshape(4)

    def __len__(self) -> int:
        return len(self.gt)

    def __repr__(self) -> str:
        return (
            f"Sequence(name={self.name!r}, modality={self.modality!r}, frames={len(self)}, "
            f"visible={int(self.visible.sum())}, dataset={self.dataset!r})"
        )

    @property
    def init_frame(self) -> int:
        """Index of the frame trackers are initialised on: 0, or the first visible frame when frame 0 is absent."""
        if self.init_box is not None or self.visible[0]:
            return 0
        present = np.flatnonzero(self.visible)
        if present.size == 0:
            raise ValueError(f"Sequence {self.name!r}: the target is absent in every frame")
        return int(present[0])

    def get_init_box(self) -> np.ndarray:
        """Initialisation box ``x, y, w, h`` (``init_box`` if given, else the GT box at :attr:`init_frame`)."""
        if self.init_box is not None:
            return self.init_box.copy()
        return self.gt[self.init_frame].copy()

    def load_rgb(self, index: int) -> np.ndarray:
        """RGB frame ``index`` as ``(H, W, 3)`` uint8."""
        return _read_rgb(self.frames_rgb[index])

    def load_x(self, index: int) -> np.ndarray:
        """X frame ``index`` as ``(H, W, 3)`` uint8 (depth is clipped, normalised and JET colour-mapped)."""
        if self.modality == "rgb":
            raise ValueError(f"Sequence {self.name!r} has modality 'rgb' and no X frames")
        path = self.frames_x[index]
        return _read_depth(path) if self.modality == "rgbd" else _read_rgb(path)

    def load_images(self, index: int, rgb_only: bool = False) -> list[np.ndarray]:
        """Frame ``index`` as separate ``(H, W, 3)`` uint8 images ``[rgb, x]`` (``[rgb]`` when ``rgb_only`` or
        modality 'rgb'), not stacked: crop them with one window (:func:`~srft_peft.tracking.crops.crop_tensor` takes
        the list) instead of copying both full frames into one 6-channel array.

        An X frame whose size differs from the RGB frame is resized (bilinear) to the RGB size.

        Example:
            >>> rgb, x = seq.load_images(0)  # doctest: +SKIP
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"Sequence {self.name!r}: frame index {index} out of range for {len(self)} frames")
        rgb = self.load_rgb(index)
        if rgb_only or self.modality == "rgb":
            return [rgb]
        x = self.load_x(index)
        if x.shape[:2] != rgb.shape[:2]:
            x = np.asarray(Image.fromarray(x).resize((rgb.shape[1], rgb.shape[0]), Image.BILINEAR))
        return [rgb, x]

    def load_frame(self, index: int, rgb_only: bool = False) -> np.ndarray:
        """Frame ``index`` as ``(H, W, 6)`` uint8 (RGB then X), or ``(H, W, 3)`` when ``rgb_only`` or modality 'rgb':
        :meth:`load_images` stacked on the channel axis."""
        images = self.load_images(index, rgb_only)
        return images[0] if len(images) == 1 else np.concatenate(images, axis=2)


# ----------------------------------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------------------------------
def _sequence_dirs(
    root: Path, marker: str | Callable[[Path], bool], split_file: str | Path | None = None
) -> list[Path]:
    """Sub-folders of ``root`` that look like sequences (contain ``marker``), optionally restricted to a name list."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root}")
    if split_file is not None:
        names = [line for _, line in _read_lines(Path(split_file))]
        dirs = []
        for number, name in enumerate(names, start=1):
            d = root / name
            if not d.is_dir():
                raise FileNotFoundError(f"{split_file}, line {number}: sequence folder {d} not found")
            dirs.append(d)
        return dirs
    check = marker if callable(marker) else (lambda d: (d / marker).exists())
    dirs = sorted((d for d in root.iterdir() if d.is_dir() and check(d)), key=_natural_key)
    if not dirs:
        raise FileNotFoundError(f"no sequence folders found under {root} (looked for sub-folders with {marker!r})")
    return dirs


def _rgbt_sequence(
    d: Path, rgb_dir: str, x_dir: str, gt_name: str, gt_x_name: str | None, dataset: str, fmt: str = "xywh"
) -> Sequence:
    gt_file = d / gt_name
    gt = read_boxes(gt_file, fmt=fmt)
    frames_rgb = _list_images(d / rgb_dir)
    frames_x = _list_images(d / x_dir)
    _check_count(frames_rgb, gt, d / rgb_dir, gt_file)
    _check_count(frames_x, gt, d / x_dir, gt_file)
    gt_x = None
    if gt_x_name is not None and (d / gt_x_name).is_file():
        gt_x = read_boxes(d / gt_x_name, fmt=fmt)
        if len(gt_x) != len(gt):
            raise ValueError(f"{d / gt_x_name}: {len(gt_x)} lines but {gt_file} has {len(gt)}")
    return Sequence(d.name, frames_rgb, frames_x, gt, gt_x=gt_x, modality="rgbt", dataset=dataset)


def load_lasher(root: str | Path, split_file: str | Path | None = None) -> list[Sequence]:
    """LasHeR: ``<seq>/visible/*.jpg``, ``<seq>/infrared/*.jpg``, ``visible.txt`` / ``infrared.txt`` / ``init.txt``.

    ``gt`` comes from ``visible.txt`` (``init.txt`` if missing), ``gt_x`` from ``infrared.txt``. Absent targets
    (``0,0,0,0`` or ``x,y,0,0``) become NaN rows. ``split_file`` lists sequence names, one per line.

    Example:
        >>> seqs = load_lasher("/data/LasHeR/testingset")  # doctest: +SKIP
    """
    seqs = []
    for d in _sequence_dirs(Path(root), "visible", split_file):
        gt_name = "visible.txt" if (d / "visible.txt").is_file() else "init.txt"
        seqs.append(_rgbt_sequence(d, "visible", "infrared", gt_name, "infrared.txt", "lasher"))
    return seqs


def load_rgbt234(root: str | Path, split_file: str | Path | None = None) -> list[Sequence]:
    """RGBT234: LasHeR-like folders; ``gt`` = ``visible.txt``, ``gt_x`` = ``infrared.txt`` (for MPR/MSR)."""
    seqs = []
    for d in _sequence_dirs(Path(root), "visible", split_file):
        gt_name = "visible.txt" if (d / "visible.txt").is_file() else "init.txt"
        seqs.append(_rgbt_sequence(d, "visible", "infrared", gt_name, "infrared.txt", "rgbt234"))
    return seqs


def load_rgbt210(root: str | Path, split_file: str | Path | None = None) -> list[Sequence]:
    """RGBT210: ``visible/``, ``infrared/`` and a single ``init.txt`` ground truth."""
    return [
        _rgbt_sequence(d, "visible", "infrared", "init.txt", None, "rgbt210")
        for d in _sequence_dirs(Path(root), "visible", split_file)
    ]


def load_gtot(root: str | Path, split_file: str | Path | None = None) -> list[Sequence]:
    """GTOT: ``<seq>/v/*.png``, ``<seq>/i/*.png``, ``groundTruth_v.txt`` / ``groundTruth_i.txt`` (space-separated
    corners ``x1 y1 x2 y2``) and a tab-separated ``init.txt`` (``x y w h``, used as :attr:`Sequence.init_box`)."""
    seqs = []
    for d in _sequence_dirs(Path(root), "groundTruth_v.txt", split_file):
        seq = _rgbt_sequence(d, "v", "i", "groundTruth_v.txt", "groundTruth_i.txt", "gtot", fmt="corners")
        if (d / "init.txt").is_file():
            init = read_boxes(d / "init.txt", absent_to_nan=False)
            if len(init) == 0:
                raise ValueError(f"{d / 'init.txt'}: empty file")
            seq.init_box = init[0]
        seqs.append(seq)
    return seqs


def load_depthtrack(root: str | Path, split_file: str | Path | None = None) -> list[Sequence]:
    """DepthTrack / VOT-RGBD: ``<seq>/color/%08d.jpg`` and ``<seq>/depth/%08d.png`` (1-based, 16-bit mm) with
    ``groundtruth.txt`` (``nan`` rows = absent). A VOT workspace (``root/sequences/<seq>``) is accepted too.

    Example:
        >>> seqs = load_depthtrack("/data/DepthTrack/test")  # doctest: +SKIP
    """
    root = Path(root)
    if (root / "sequences").is_dir() and not (root / "sequences" / "color").is_dir():
        root = root / "sequences"
    seqs = []
    for d in _sequence_dirs(root, "color", split_file):
        gt_file = d / "groundtruth.txt"
        gt = read_boxes(gt_file)
        color = d / "color"
        ext = ".jpg"
        if not (color / "00000001.jpg").is_file() and (color / "00000001.png").is_file():
            ext = ".png"
        frames_rgb = _numbered_frames(color, "%08d" + ext, 1, len(gt), gt_file)
        frames_x = _numbered_frames(d / "depth", "%08d.png", 1, len(gt), gt_file)
        # Frames beyond the ground truth are an error, as in the other loaders (not silently dropped).
        _check_count(_list_images(color, (ext,)), gt, color, gt_file)
        _check_count(_list_images(d / "depth", (".png",)), gt, d / "depth", gt_file)
        seqs.append(Sequence(d.name, frames_rgb, frames_x, gt, modality="rgbd", dataset="depthtrack"))
    return seqs


def load_visevent(root: str | Path, split_file: str | Path | None = None) -> list[Sequence]:
    """VisEvent: ``<seq>/vis_imgs/*.bmp``, ``<seq>/event_imgs/*.bmp``, ``groundtruth.txt`` and ``absent_label.txt``.

    Note the inverted name: in ``absent_label.txt`` **1 means present** and 0 means absent.
    """
    seqs = []
    for d in _sequence_dirs(Path(root), "vis_imgs", split_file):
        gt_file = d / "groundtruth.txt"
        gt = read_boxes(gt_file)
        frames_rgb = _list_images(d / "vis_imgs")
        frames_x = _list_images(d / "event_imgs")
        _check_count(frames_rgb, gt, d / "vis_imgs", gt_file)
        _check_count(frames_x, gt, d / "event_imgs", gt_file)
        visible = None
        label_file = d / "absent_label.txt"
        if label_file.is_file():
            flags = read_flags(label_file)
            if len(flags) != len(gt):
                raise ValueError(f"{label_file}: {len(flags)} lines but {gt_file} has {len(gt)}")
            bad = np.flatnonzero((flags != 0) & (flags != 1))
            if bad.size:
                raise ValueError(f"{label_file}, line {bad[0] + 1}: expected 0 or 1, got {flags[bad[0]]}")
            visible = flags == 1
        seqs.append(Sequence(d.name, frames_rgb, frames_x, gt, visible=visible, modality="rgbe", dataset="visevent"))
    return seqs


def load_fe108(root: str | Path, split_file: str | Path | None = None, x_dir: str | None = None) -> list[Sequence]:
    """FE108: ``<seq>/img/%04d.jpg`` (1-based) with ``groundtruth_rect.txt``; event frames from ``x_dir``
    (default: the first of ``inter3_stack``, ``events``, ``event_imgs`` that exists), sorted naturally."""
    seqs = []
    for d in _sequence_dirs(Path(root), "groundtruth_rect.txt", split_file):
        gt_file = d / "groundtruth_rect.txt"
        gt = read_boxes(gt_file)
        frames_rgb = _numbered_frames(d / "img", "%04d.jpg", 1, len(gt), gt_file)
        candidates = [x_dir] if x_dir else ["inter3_stack", "events", "event_imgs"]
        folder = next((d / c for c in candidates if (d / c).is_dir()), None)
        if folder is None:
            raise FileNotFoundError(f"{d}: no event-frame folder among {candidates}")
        frames_x = _list_images(folder)
        _check_count(frames_x, gt, folder, gt_file)
        seqs.append(Sequence(d.name, frames_rgb, frames_x, gt, modality="rgbe", dataset="fe108"))
    return seqs


def load_coesot(root: str | Path, split_file: str | Path | None = None) -> list[Sequence]:
    """COESOT: ``<seq>/<seq>_aps/frame%04d.png`` and ``<seq>/<seq>_dvs/frame%04d.png`` (0-based) with
    ``groundtruth.txt``; absence is taken from the boxes (zero-size or ``nan``)."""
    seqs = []
    for d in _sequence_dirs(Path(root), lambda p: (p / f"{p.name}_aps").is_dir(), split_file):
        gt_file = d / "groundtruth.txt"
        gt = read_boxes(gt_file)
        frames_rgb = _list_images(d / f"{d.name}_aps")
        frames_x = _list_images(d / f"{d.name}_dvs")
        _check_count(frames_rgb, gt, d / f"{d.name}_aps", gt_file)
        _check_count(frames_x, gt, d / f"{d.name}_dvs", gt_file)
        seqs.append(Sequence(d.name, frames_rgb, frames_x, gt, modality="rgbe", dataset="coesot"))
    return seqs


def load_rgb_only(root: str | Path, split_file: str | Path | None = None) -> list[Sequence]:
    """Plain RGB sequences: ``<seq>/img/*.jpg`` (any image extension, natural order) and ``groundtruth.txt``."""
    seqs = []
    for d in _sequence_dirs(Path(root), "img", split_file):
        gt_file = d / "groundtruth.txt"
        if not gt_file.is_file() and (d / "groundtruth_rect.txt").is_file():
            gt_file = d / "groundtruth_rect.txt"
        gt = read_boxes(gt_file)
        frames = _list_images(d / "img")
        _check_count(frames, gt, d / "img", gt_file)
        seqs.append(Sequence(d.name, frames, [], gt, modality="rgb", dataset="rgb"))
    return seqs


@dataclass(frozen=True)
class DatasetRecord:
    """Everything the toolkit knows about one benchmark: its loader, metric protocol, modality and on-disk layout.

    Example:
        >>> record = DATASETS["depthtrack"]
        >>> record.modality, record.protocol.name, record.protocol.long_term
        ('rgbd', 'depthtrack', True)
    """

    name: str = field(metadata={"help": "Key of :data:`DATASETS` (lower case; what ``load_dataset`` takes)."})
    loader: Callable[..., list[Sequence]] = field(metadata={"help": "``loader(root, split_file=None, **kw)``."})
    protocol: Protocol = field(metadata={"help": "How its official toolkit scores it (a :class:`Protocol`)."})
    protocol_source: str = field(metadata={"help": "Where the protocol's rules come from (toolkit, paper)."})
    modality: str = field(metadata={"help": f"One of {MODALITIES}."})
    layout: str = field(metadata={"help": "The files of one sequence on disk."})
    demo: bool = field(
        default=False,
        metadata={"help": "The layout the demo set of its modality is written in, and the data set a fine-tune of "
                          "that modality uses by default (one per modality)."},
    )
    tracker_prefix: bool = field(
        default=False,
        metadata={"help": "Its official MATLAB toolkit reads a tracker's results as ``<tracker>_<seq>.txt`` (RGBT234, "
                          "RGBT210, GTOT); otherwise ``<seq>.txt``. The result writers follow it."},
    )

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name != self.name.lower():
            raise ValueError(f"DatasetRecord.name must be a non-empty lower-case string, got {self.name!r}")
        if not isinstance(self.protocol, Protocol):
            raise ValueError(f"dataset {self.name!r} has no metric protocol (got {self.protocol!r}): give it one of "
                             f"PROTOCOLS {sorted(PROTOCOLS)} or a Protocol(...) of its own, with its source")
        if not isinstance(self.protocol_source, str) or not self.protocol_source.strip():
            raise ValueError(f"dataset {self.name!r}: protocol_source must say where protocol "
                             f"{self.protocol.name!r} comes from, got {self.protocol_source!r}")
        if self.modality not in MODALITIES:
            raise ValueError(f"dataset {self.name!r}: modality must be one of {MODALITIES}, got {self.modality!r}")
        if not callable(self.loader):
            raise ValueError(f"dataset {self.name!r}: loader must be callable, got {self.loader!r}")


#: name -> :class:`DatasetRecord`, one per benchmark (:func:`register_dataset` adds one).
DATASETS: dict[str, DatasetRecord] = {}


def register_dataset(record: DatasetRecord) -> DatasetRecord:
    """Add ``record`` to :data:`DATASETS`; a taken name, or a second ``demo`` record of a modality, is an error."""
    if not isinstance(record, DatasetRecord):
        raise TypeError(f"register_dataset takes a DatasetRecord, got {type(record).__name__}")
    if record.name in DATASETS:
        raise ValueError(f"a dataset named {record.name!r} is already registered")
    if record.demo and any(r.demo and r.modality == record.modality for r in DATASETS.values()):
        raise ValueError(f"dataset {record.name!r}: modality {record.modality!r} already has its demo dataset")
    DATASETS[record.name] = record
    return record


def get_dataset(name: str) -> DatasetRecord:
    """The record of ``name`` (case-insensitive, ``_`` read as ``-``); an unknown name lists the registered ones."""
    key = str(name).lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[key]


def demo_datasets() -> dict[str, str]:
    """modality -> the name of its ``demo`` dataset, in :data:`MODALITIES` order."""
    demo = {r.modality: r.name for r in DATASETS.values() if r.demo}
    return {m: demo[m] for m in MODALITIES if m in demo}


_RGBT_LAYOUT = "<seq>/visible/*.jpg, <seq>/infrared/*.jpg"
_RGBT234_SOURCE = "RGBT234 toolkit (Li et al., Pattern Recognition 2019): boxes scored as written, MPR / MSR"
for _record in (
    DatasetRecord("lasher", load_lasher, PROTOCOLS["lasher"], "LasHeR toolkit (Li et al., TIP 2021)", "rgbt",
                  f"{_RGBT_LAYOUT}, visible.txt, infrared.txt, init.txt", demo=True),
    DatasetRecord("rgbt234", load_rgbt234, PROTOCOLS["rgbt234"], _RGBT234_SOURCE, "rgbt",
                  f"{_RGBT_LAYOUT}, visible.txt, infrared.txt, init.txt", tracker_prefix=True),
    DatasetRecord("rgbt210", load_rgbt210, PROTOCOLS["rgbt210"],
                  "RGBT210 (Li et al., ACM MM 2017), a subset of RGBT234 scored by the same toolkit family with one "
                  "ground truth (PR / SR); not stated in REFERENCE.md, see docs/tracking.md", "rgbt",
                  f"{_RGBT_LAYOUT}, init.txt", tracker_prefix=True),
    DatasetRecord("gtot", load_gtot, PROTOCOLS["gtot"], "GTOT toolkit (Li et al., TIP 2016)", "rgbt",
                  "<seq>/v/*.png, <seq>/i/*.png, groundTruth_v.txt, groundTruth_i.txt (corners), init.txt",
                  tracker_prefix=True),
    DatasetRecord("depthtrack", load_depthtrack, PROTOCOLS["depthtrack"],
                  "DepthTrack / VOT long-term toolkit (Yan et al., ICCV 2021): precision, recall, F", "rgbd",
                  "<seq>/color/%08d.jpg, <seq>/depth/%08d.png (16-bit mm), groundtruth.txt", demo=True),
    DatasetRecord("vot-rgbd", load_depthtrack, PROTOCOLS["depthtrack"],
                  "VOT-RGBD long-term measures (precision, recall, F), as DepthTrack", "rgbd",
                  "VOT workspace sequences/<seq>/ with color/, depth/, groundtruth.txt"),
    DatasetRecord("visevent", load_visevent, PROTOCOLS["visevent"],
                  "VisEvent toolkit (Wang et al., 2021), LaSOT-style MATLAB code: SR, PR, NPR", "rgbe",
                  "<seq>/vis_imgs/*.bmp, <seq>/event_imgs/*.bmp, groundtruth.txt, absent_label.txt", demo=True),
    DatasetRecord("fe108", load_fe108, PROTOCOLS["fe108"],
                  "FE108 (Zhang et al., ICCV 2021) reports RSR / RPR, OTB-style one-pass success AUC and 20 px "
                  "precision on fully annotated sequences; not stated in REFERENCE.md, see docs/tracking.md", "rgbe",
                  "<seq>/img/%04d.jpg, event frames (inter3_stack/, events/ or event_imgs/), groundtruth_rect.txt"),
    DatasetRecord("coesot", load_coesot, PROTOCOLS["coesot"],
                  "COESOT_eval_toolkit (Tang et al., 2022; the VisEvent group), LaSOT-style MATLAB code: SR, PR, NPR; "
                  "not stated in REFERENCE.md, see docs/tracking.md", "rgbe",
                  "<seq>/<seq>_aps/frame%04d.png, <seq>/<seq>_dvs/frame%04d.png, groundtruth.txt"),
    DatasetRecord("rgb", load_rgb_only, PROTOCOLS["default"], "generic one-pass evaluation (no benchmark toolkit)",
                  "rgb", "<seq>/img/*.jpg, groundtruth.txt", demo=True),
):
    register_dataset(_record)


def load_dataset(name: str, root: str | Path, **kwargs: Any) -> list[Sequence]:
    """Load a benchmark by name (case-insensitive; see :data:`DATASETS`).

    Example:
        >>> seqs = load_dataset("depthtrack", "/data/DepthTrack/test")  # doctest: +SKIP
    """
    return get_dataset(name).loader(root, **kwargs)
