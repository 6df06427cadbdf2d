"""Significance checkpoints and the Hugging Face Hub, without a network: a pre-populated cache in offline mode, a
patched ``hf_hub_download`` and a mocked ``HfApi``."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import MagicMock

import huggingface_hub
import pytest
import torch
from checkpoint_helpers import COMMIT, hub_cache, make_srft, tiny
from huggingface_hub import constants, errors
from safetensors.torch import load_file

from srft_peft import SRFTModel, load_significance_checkpoint
from srft_peft.checkpoint import CONFIG_NAME, MODEL_CARD_NAME, significance_path

REPO = "someone/tiny-significance"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SRFTModel]:
    folder = tmp_path_factory.mktemp("saved")
    src = make_srft("kfac")
    src.save_pretrained(folder)
    return folder, src


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline mode switched on after import: it must be read at call time."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def assert_same_significance(srft: SRFTModel, src: SRFTModel) -> None:
    loaded, expected = srft.prior.tensors(), src.prior.tensors()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_offline_loads_from_a_populated_cache(tmp_path: Path, saved, offline, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, src = saved
    cache = tmp_path / "hub"
    hub_cache(cache, REPO, folder)
    assert_same_significance(SRFTModel.from_pretrained(tiny(), REPO, cache_dir=cache), src)

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # the default cache (HF_HUB_CACHE)
    target = make_srft("kfac", data_seed=5)
    target.load_significance(REPO, revision=COMMIT)
    assert_same_significance(target, src)


def test_offline_without_the_files_cached_is_a_clear_error(tmp_path: Path, offline) -> None:
    target = make_srft("kfac", data_seed=5)
    prior = target.prior
    with pytest.raises(FileNotFoundError, match=r"'srft_config\.json' of the Hub repo 'someone/elsewhere' \(revision "
                                                r"main\) is not in the Hugging Face cache and offline mode is on"):
        target.load_significance("someone/elsewhere", cache_dir=tmp_path)
    assert target.prior is prior


def test_download_follows_offline_mode_at_call_time(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _ = saved
    calls = []

    def fake_download(repo_id: str, filename: str, **kwargs) -> str:
        calls.append((repo_id, filename, kwargs))
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    for offline in (False, True):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
        calls.clear()
        load_significance_checkpoint(REPO, revision="v1", token="secret")
        assert [(r, f) for r, f, _ in calls] == [(REPO, CONFIG_NAME), (REPO, significance_path(folder).name)]
        for _, _, kwargs in calls:
            assert kwargs["local_files_only"] is offline
            assert (kwargs["revision"], kwargs["token"], kwargs["library_name"]) == ("v1", "secret", "srft-peft")


def test_a_local_folder_wins_over_the_hub(tmp_path: Path, saved, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, src = saved
    shutil.copytree(folder, tmp_path / REPO)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", MagicMock(side_effect=AssertionError("network")))
    assert_same_significance(SRFTModel.from_pretrained(tiny(), REPO), src)
    with pytest.warns(UserWarning, match="revision='v1' is ignored for the local folder"):
        load_significance_checkpoint(REPO, revision="v1")


def test_neither_a_folder_nor_a_repo_id(tmp_path: Path, saved) -> None:
    with pytest.raises(FileNotFoundError, match="no folder .*missing.* not a valid Hugging Face Hub repo id"):
        load_significance_checkpoint(tmp_path / "missing")
    with pytest.raises(NotADirectoryError, match="is a file"):
        load_significance_checkpoint(saved[0] / CONFIG_NAME)


@pytest.mark.parametrize("error, message", [
    (errors.LocalEntryNotFoundError("connection refused"), "could not download .*no connection"),
    (errors.RemoteEntryNotFoundError("404", response=MagicMock()), "has no file 'srft_config.json'"),
    (errors.RepositoryNotFoundError("404", response=MagicMock()), "no local folder .* and no Hub repo .*token="),
    (errors.RevisionNotFoundError("404", response=MagicMock()), "has no revision 'v9'"),
])
def test_hub_errors_are_explained(monkeypatch: pytest.MonkeyPatch, error: Exception, message: str) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", MagicMock(side_effect=error))
    with pytest.raises(OSError, match=message):
        load_significance_checkpoint(REPO, revision="v9")


class FakeApi:
    """Records what ``push_to_hub`` asks of ``HfApi``; keeps a copy of the uploaded folder."""

    last: FakeApi

    def __init__(self, token=None) -> None:
        self.token, self.calls, self.uploaded = token, [], {}
        FakeApi.last = self

    def create_repo(self, repo_id: str, **kwargs) -> str:
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id: str, folder_path: str, commit_message: str, **kwargs) -> SimpleNamespace:
        self.folder = Path(folder_path)
        self.uploaded = {p.name: p.read_bytes() for p in self.folder.iterdir()}
        self.calls.append(("upload_folder", repo_id, commit_message))
        self.delete_patterns = kwargs.get("delete_patterns")
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{COMMIT}")


def test_push_to_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    src = make_srft("kfac", train_steps=1)
    info = src.push_to_hub(REPO, private=True, commit_message="prior of Tiny", token="secret",
                           include_transfer_state=True)
    api = FakeApi.last
    assert info.commit_url.endswith(COMMIT)
    assert api.token == "secret"
    assert api.calls == [("create_repo", REPO, {"exist_ok": True, "private": True}),
                         ("upload_folder", REPO, "prior of Tiny")]
    assert not api.folder.exists()  # the temporary folder is gone
    # one commit uploads the files and deletes a previous save's tensors file (another content name) from the repo
    assert api.delete_patterns == ["significance*.safetensors"]

    for name, data in api.uploaded.items():
        (tmp_path / name).write_bytes(data)
    tensors_file = significance_path(tmp_path).name
    assert sorted(api.uploaded) == sorted([CONFIG_NAME, tensors_file, MODEL_CARD_NAME])
    assert f"`{tensors_file}`" in api.uploaded[MODEL_CARD_NAME].decode()
    tensors = load_file(significance_path(tmp_path))
    assert int(tensors["transfer.step"]) == 1
    assert all(torch.equal(tensors[k], t) for k, t in src.prior.tensors().items())
    assert f'SRFTModel.from_pretrained(model, "{REPO}"' in (tmp_path / MODEL_CARD_NAME).read_text()
    fresh = tiny()
    fresh.load_state_dict(src.base_model.state_dict())
    assert SRFTModel.from_pretrained(fresh, tmp_path).step == 1


def test_push_is_refused_offline(offline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub, "HfApi", MagicMock(side_effect=AssertionError("network")))
    with pytest.raises(OSError, match="offline mode is on"):
        make_srft("kfac").push_to_hub(REPO)


def test_a_hub_repo_with_weights_downloads_the_files_its_config_names(tmp_path: Path, offline) -> None:
    """The config is read first; the tensors file and the fine-tuned weights it names come from the same commit."""
    src = make_srft("kfac", train_steps=2)
    folder = tmp_path / "saved"
    src.save_pretrained(folder, state_dict=src.state_dict())
    cache = tmp_path / "hub"
    hub_cache(cache, REPO, folder)
    dst = SRFTModel.from_pretrained(tiny(), REPO, cache_dir=cache)
    assert_same_significance(dst, src)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())
