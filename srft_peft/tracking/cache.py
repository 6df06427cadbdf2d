"""Where the tracking toolkit caches what it builds (pretrained demo trackers), and the inter-process lock that makes
concurrent processes (``accelerate launch``) build a cached item once.

Example:
    >>> from srft_peft.tracking.cache import default_cache_dir, file_lock
    >>> with file_lock(default_cache_dir() / ".example.lock"):  # doctest: +SKIP
    ...     pass
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["default_cache_dir", "file_lock"]


def default_cache_dir() -> Path:
    """``$SRFT_CACHE_DIR`` if set, else ``~/.cache/srft_peft`` (pretrained demo trackers live in ``pretrained/``)."""
    env = os.environ.get("SRFT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "srft_peft"


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``path`` (POSIX ``flock``; a no-op where unavailable), creating its
    parent folder; the lock file itself stays."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
