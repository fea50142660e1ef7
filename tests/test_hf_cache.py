"""Model names resolve in a local Hugging Face cache (built here in tmp_path), never online."""

from __future__ import annotations

import numpy as np
import pytest

from numpyllm.cli import main
from numpyllm.hf import save_gpt2
from numpyllm.hf.cache import find_cached, hub_cache_dir, resolve_model
from numpyllm.hf.common import CheckpointNotFoundError
from numpyllm.models.gpt import GPT, GPTConfig
from numpyllm.tokenizer import Tokenizer

TEXT = "the cat sat on the mat"


def fake_snapshot(hub, repo: str, commit: str, main: bool = True):
    """hub/models--<repo>/snapshots/<commit>/ holding a tiny GPT-2 folder and tokenizer."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    tokenizer = Tokenizer.char_level(TEXT)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, d_model=8,
                       max_seq_len=16)  # fmt: skip
    save_gpt2(GPT(config, np.random.default_rng(len(commit))), snapshot)
    tokenizer.save(snapshot)
    if main:
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "hf" / "hub"


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "direct"))
    assert hub_cache_dir() == tmp_path / "direct"


def test_name_resolves_to_the_snapshot_refs_main_names(hub):
    fake_snapshot(hub, "gpt2", "aaaa", main=False)
    current = fake_snapshot(hub, "gpt2", "bbbb")
    assert resolve_model("gpt2") == current
    (hub / "models--gpt2" / "refs" / "main").write_text("aaaa")
    assert resolve_model("gpt2") == hub / "models--gpt2" / "snapshots" / "aaaa"


def test_name_without_organisation_finds_the_single_one(hub):
    snapshot = fake_snapshot(hub, "openai-community/gpt2", "cccc")
    assert find_cached("gpt2") == snapshot
    assert resolve_model("openai-community/gpt2") == snapshot
    fake_snapshot(hub, "someone/gpt2", "dddd")
    with pytest.raises(CheckpointNotFoundError, match="several cached repositories"):
        resolve_model("gpt2")


def test_missing_name_says_where_to_put_the_folder(hub):
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_model("distilgpt2")
    message = str(info.value)
    assert str(hub) in message and "models--distilgpt2/snapshots" in message
    assert "never downloads" in message and "huggingface-cli download distilgpt2" in message
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        resolve_model("./no/such/folder")


def test_a_path_wins_over_the_cache(hub, tmp_path, monkeypatch):
    fake_snapshot(hub, "gpt2", "eeee")
    local = fake_snapshot(tmp_path / "elsewhere", "x", "gpt2")  # a folder named gpt2
    monkeypatch.chdir(local.parent)
    assert resolve_model("gpt2").resolve() == local.resolve()


def test_generate_runs_on_a_cached_name(hub, capsys):
    fake_snapshot(hub, "openai-community/gpt2", "abcd")
    status = main(["generate", "gpt2", "--prompt", "the", "--greedy", "--max-new-tokens", "5"])
    out = capsys.readouterr()
    assert status == 0, out.err
    assert out.out.startswith("the") and len(out.out.strip()) > len("the")
    assert "snapshots/abcd" in out.err
    assert main(["generate", "no-such-model", "--prompt", "the"]) == 1
    assert "models--no-such-model" in capsys.readouterr().err
