"""Finding a significance checkpoint in a local folder or on the Hugging Face Hub, and publishing one.

A local folder always wins; anything else must be a Hub repo id, downloaded into the Hugging Face cache. Offline mode
(``huggingface_hub.constants.HF_HUB_OFFLINE``, i.e. ``HF_HUB_OFFLINE=1``) is read at each call: the cache is then the
only source, and a file that is not cached is an error that says so.

Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> resolve_folder(folder, ["srft_config.json"]) == Path(folder)
    True
"""

from __future__ import annotations

import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import huggingface_hub
from huggingface_hub import constants, errors
from huggingface_hub.utils import validate_repo_id

from ._version import __version__

#: A Hub snapshot folder's name: the commit it holds.
COMMIT_HASH = re.compile(r"[0-9a-f]{40}")


def is_offline() -> bool:
    """Whether Hugging Face offline mode is on now (read at call time, not at import)."""
    return bool(constants.HF_HUB_OFFLINE)


def resolve_folder(dir_or_repo_id: Union[str, Path], filenames: Sequence[str], revision: Optional[str] = None, *,
                   cache_dir: Union[str, Path, None] = None, token: Union[str, bool, None] = None,
                   then: Optional[Callable[[Path], Sequence[str]]] = None) -> Path:
    """The local folder holding ``filenames``: ``dir_or_repo_id`` itself when it is a folder, else the Hub snapshot
    folder the files were downloaded (or, offline, found) in; ``then(folder)`` names more files to download from the
    same commit (files named by a downloaded one). Raises ``OSError`` with a readable message otherwise."""
    path = Path(dir_or_repo_id).expanduser()
    if path.is_dir():
        if revision is not None:
            warnings.warn(f"revision={revision!r} is ignored for the local folder {str(path)!r}", stacklevel=3)
        return path
    if path.exists():
        raise NotADirectoryError(f"{str(path)!r} is a file; expected the folder written by save_pretrained or a Hub "
                                 "repo id")
    repo_id = str(dir_or_repo_id)
    try:
        validate_repo_id(repo_id)
    except errors.HFValidationError:
        raise FileNotFoundError(f"no folder {repo_id!r} (and it is not a valid Hugging Face Hub repo id)") from None
    files = [download(repo_id, name, revision, cache_dir=cache_dir, token=token) for name in filenames]
    folder = Path(files[0]).parent
    if then is not None:
        pinned = folder.name if COMMIT_HASH.fullmatch(folder.name) else revision  # the snapshot's commit
        for name in then(folder):
            download(repo_id, name, pinned, cache_dir=cache_dir, token=token)
    return folder


def download(repo_id: str, filename: str, revision: Optional[str] = None, *, cache_dir: Union[str, Path, None] = None,
             token: Union[str, bool, None] = None) -> str:
    """``hf_hub_download`` with cache-only lookup in offline mode and errors that say what to do."""
    offline = is_offline()
    where = f"{filename!r} of the Hub repo {repo_id!r} (revision {revision or 'main'})"
    try:
        return huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, token=token,
                                               local_files_only=offline, library_name="srft-peft",
                                               library_version=__version__)
    except errors.RepositoryNotFoundError as e:
        raise FileNotFoundError(f"no local folder {repo_id!r} and no Hub repo {repo_id!r} (or it is private or gated: "
                                "log in or pass token=)") from e
    except errors.RevisionNotFoundError as e:
        raise FileNotFoundError(f"the Hub repo {repo_id!r} has no revision {revision!r}") from e
    except errors.RemoteEntryNotFoundError as e:
        raise FileNotFoundError(f"the Hub repo {repo_id!r} has no file {filename!r}: it is not an SRFT significance "
                                "checkpoint (SRFT reads only safetensors, never pickles)") from e
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:
        if offline:
            raise FileNotFoundError(f"{where} is not in the Hugging Face cache and offline mode is on "
                                    "(HF_HUB_OFFLINE=1): download it once while online, or pass a local folder") from e
        raise OSError(f"could not download {where} and it is not in the Hugging Face cache (no connection?): {e}") from e


def push_folder(repo_id: str, write: Callable[[Path], Any], *, private: Optional[bool] = None,
                commit_message: str = "Upload SRFT significance", token: Union[str, bool, None] = None,
                delete_patterns: Optional[Sequence[str]] = None) -> Any:
    """Create ``repo_id`` if needed, let ``write(folder)`` fill a temporary folder, upload it in one commit that also
    deletes the repo's files matching ``delete_patterns`` and not uploaded (e.g. a previous save's tensors file);
    returns the commit info (its ``.commit_url`` is the URL of the commit)."""
    if is_offline():
        raise OSError(f"cannot push to {repo_id!r}: Hugging Face offline mode is on (HF_HUB_OFFLINE=1)")
    api = huggingface_hub.HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    with tempfile.TemporaryDirectory(prefix="srft-push-") as tmp:
        write(Path(tmp))
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message,
                                 delete_patterns=list(delete_patterns) if delete_patterns else None)
