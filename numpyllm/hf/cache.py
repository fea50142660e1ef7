"""Model names resolved in the local Hugging Face cache: never the network.

transformers and huggingface_hub keep what they download under ``$HF_HUB_CACHE`` (default
``$HF_HOME/hub``, and ``$HF_HOME`` defaults to ``~/.cache/huggingface``), one folder per
repository::

    models--openai-community--gpt2/
      refs/main                  the commit hash that "main" pointed at when downloaded
      snapshots/<hash>/          the repository's files at that commit (links into blobs/)
        config.json  model.safetensors  tokenizer.json ...

``find_cached("gpt2")`` returns that snapshot folder: the one ``refs/main`` names, else the
newest snapshot. A name without an organisation also matches ``models--<org>--<name>`` when
exactly one organisation has it (the Hub moved ``gpt2`` to ``openai-community/gpt2``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from numpyllm.hf.common import CheckpointNotFoundError

NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloaded repositories on this machine."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def is_model_name(text: str) -> bool:
    """ "gpt2", "openai-community/gpt2": a repository id rather than a path."""
    return bool(NAME.fullmatch(text)) and ".." not in text


def _repo_folders(name: str, cache: Path) -> list[Path]:
    exact = cache / ("models--" + name.replace("/", "--"))
    if exact.is_dir():
        return [exact]
    if "/" in name:
        return []
    return sorted(cache.glob(f"models--*--{name}"))  # gpt2 -> models--openai-community--gpt2


def _snapshot(repo: Path) -> Path | None:
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
        if (snapshots / commit).is_dir():
            return snapshots / commit
    found = [s for s in snapshots.iterdir() if s.is_dir()] if snapshots.is_dir() else []
    return max(found, key=lambda s: s.stat().st_mtime) if found else None


def find_cached(name: str) -> Path | None:
    """The cached snapshot folder of the model ``name``, or None when it is not cached."""
    if not is_model_name(name):
        return None
    repos = _repo_folders(name, hub_cache_dir())
    if len(repos) != 1:
        return None
    return _snapshot(repos[0])


def resolve_model(spec: str | os.PathLike) -> Path:
    """A folder given as a path, or a model name found in the local Hugging Face cache.

    CheckpointNotFoundError, saying where numpyllm looked and where to put the folder, when
    neither exists: numpyllm never downloads anything.
    """
    path = Path(spec).expanduser()
    if path.exists():
        return path
    text = os.fspath(spec)
    cache = hub_cache_dir()
    if is_model_name(text):
        found = find_cached(text)
        if found is not None:
            return found
        repos = _repo_folders(text, cache)
        if len(repos) > 1:
            raise CheckpointNotFoundError(
                f"{text!r} matches several cached repositories in {cache} "
                f"({', '.join(r.name for r in repos)}): give the full name, organisation/model"
            )
        folder = "models--" + text.replace("/", "--")
        raise CheckpointNotFoundError(
            f"no folder {text!r} here, and no {folder}/snapshots/... in the Hugging Face cache "
            f"{cache} ($HF_HUB_CACHE, else $HF_HOME/hub). numpyllm never downloads: fetch it "
            f"once with `huggingface-cli download {text}` (or transformers' from_pretrained), "
            "or pass the path of a folder holding config.json, model.safetensors and "
            "tokenizer.json"
        )
    raise CheckpointNotFoundError(f"no checkpoint at {path}: the path does not exist")
