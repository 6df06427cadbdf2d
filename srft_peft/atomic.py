"""Crash-safe writes into a folder: temporary files, renames, and the clean-up of what a killed writer left behind.

A file is written into a hidden temporary folder (``.srft-tmp-<pid>-<hex>``; whatever the writing library creates beside
its output stays in there), flushed to disk and renamed over its final name (``os.replace`` is atomic), so a reader sees
the old file or the new one, never half of one. A folder that does not exist yet is filled as a hidden temporary folder
beside it (``.<name>.srft-tmp-<pid>-<hex>``) and renamed into place. A process killed mid-write leaves its temporary
files behind; :func:`remove_stale` deletes those whose writer is no longer running (the process id is in the name), and
readers never look at them.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_file(folder, "a.txt", lambda path: path.write_text("new")).read_text()
    'new'
    >>> sorted(p.name for p in folder.iterdir())
    ['a.txt']
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Union

#: Part of the name of every temporary file or folder a writer creates.
TMP_MARKER = ".srft-tmp-"


def temp_name(prefix: str = "") -> str:
    """A new hidden temporary name: ``<prefix>.srft-tmp-<pid>-<hex>`` (the pid tells :func:`remove_stale` whether its
    writer still runs)."""
    return f"{prefix}{TMP_MARKER}{os.getpid()}-{uuid.uuid4().hex}"


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries after renames) to disk; folders only where the OS allows it."""
    if path.is_dir() and os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(folder: Path, name: Union[str, Callable[[Path], str]], write: Callable[[Path], None]) -> Path:
    """``write(path)`` a temporary file in ``folder``, flush it and rename it to ``folder / name``; returns that path.
    ``name`` may be a function of the written file (a name from its content). On an ``Exception`` the temporary file
    is removed and ``folder / name`` is as it was."""
    # The writer's own temporary folder: whatever ``write`` leaves in it (safetensors writes through a temporary file
    # of its own) goes with the folder, here or, after a crash, in remove_stale.
    private = folder / temp_name()
    private.mkdir()
    tmp = private / "file"
    try:
        write(tmp)
        fsync_path(tmp)
        final = folder / (name if isinstance(name, str) else name(tmp))
        os.replace(tmp, final)
    except Exception:
        shutil.rmtree(private, ignore_errors=True)
        raise
    private.rmdir()
    return final


def writer_alive(name: str) -> bool:
    """Whether the process that created the temporary entry ``name`` may still run (names without a pid: no; on
    platforms without a harmless liveness probe: yes, so nothing is removed there)."""
    pid = name.rpartition(TMP_MARKER)[2].partition("-")[0]
    if not pid.isdigit():
        return False
    if os.name != "posix":
        return True
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True


def stale_entries(folder: Path) -> list[Path]:
    """Temporary entries of dead writers: inside ``folder`` and, for a folder being created, beside it."""
    folder = folder.absolute()
    found = [p for p in folder.iterdir() if p.name.startswith(TMP_MARKER)] if folder.is_dir() else []
    if folder.parent.is_dir():
        found += [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}{TMP_MARKER}")]
    return [p for p in found if not writer_alive(p.name)]


def remove_stale(folder: Path) -> list[Path]:
    """Delete :func:`stale_entries` of ``folder`` (what killed writers left); returns what was removed."""
    stale = stale_entries(folder)
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale
