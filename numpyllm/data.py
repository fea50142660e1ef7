"""Training text and token batches.

Text:
    builtin_corpus()   English prose that ships with Python itself (the help texts of
                       ``pydoc_data.topics``): always there, no download.
    read_text(path)    a UTF-8 file, or a folder of .txt files (sorted, recursive).

Tokens: :class:`TokenDataset` encodes text once and caches the ids as a ``.npy``
file (uint16 when the vocabulary fits, else uint32) keyed by a hash of the text and
the tokenizer; later runs memory-map the cache instead of encoding again, so the
ids of a corpus larger than RAM stay on disk. The last ``val_fraction`` of the ids
is the validation split. Batches are random windows (training) or consecutive ones
(evaluation)::

    ds = TokenDataset(builtin_corpus(), tokenizer, cache_dir="cache")
    x, y = ds.get_batch("train", batch_size=8, seq_len=64, rng=rng)   # y[:, t] == x[:, t+1]

Models that shift their labels inside (GPT here, like Hugging Face's) take one window
as both input and labels; ``sample_windows(split, B, seq_len + 1, rng)`` gives the
same tokens as ``get_batch`` in that form: ``model(w, labels=w)`` scores
``w[:, 1:]`` from ``w[:, :-1]``, exactly the (x, y) pairs of ``get_batch``.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from numpyllm.tokenizer import Tokenizer, chunk_text

__all__ = ["builtin_corpus", "read_text", "token_dtype", "default_cache_dir", "TokenDataset"]

SEPARATOR = "\n\n"  # between files / topics: a blank line, which means nothing to any tokenizer
SPLITS = ("train", "val")

_CACHE_FORMAT = b"numpyllm-token-cache-v1"  # bump when the encoding scheme changes
_READ_CHARS = 1 << 20  # text is read, hashed and chunked in pieces of this many characters
_CHUNK_CHARS = 1 << 15  # characters per chunk handed to the tokenizer
_CHUNKS_PER_BATCH = 8  # chunks per encode_batch call: ~100 bytes of tokenizer objects a token
_COPY_BYTES = 1 << 20  # the encoded ids are copied into the .npy file this many bytes at a time
_PROGRESS_CHARS = 5_000_000  # show a progress bar by default from this many characters


# ---------------------------------------------------------------------- text


@functools.lru_cache(maxsize=1)
def builtin_corpus() -> str:
    """English text available on every Python install: the interpreter's own help pages.

    ``pydoc_data.topics.topics`` maps each help topic ("assert", "if", "with", ...)
    to the text ``help()`` shows for it (about 0.46 M characters on Python 3.11).
    Topics are joined in sorted order with a blank line between them; trailing
    spaces are dropped and runs of blank lines collapsed to one.
    """
    from pydoc_data.topics import topics

    texts = []
    for key in sorted(topics):
        text = re.sub(r"[ \t]+$", "", topics[key].strip(), flags=re.MULTILINE)
        texts.append(re.sub(r"\n{3,}", "\n\n", text))
    return SEPARATOR.join(texts)


def _text_files(path: Path) -> list[Path]:
    """The file itself, or the non-empty .txt files under a folder, in sorted order."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such file or folder", str(path))
    files = [f for f in path.rglob("*.txt") if f.is_file() and f.stat().st_size > 0]
    return sorted(files, key=lambda f: f.relative_to(path).parts)


def _iter_text(path: Path, files: list[Path]) -> Iterator[str]:
    """The text of ``files`` joined by SEPARATOR, in pieces of at most _READ_CHARS."""
    for i, file in enumerate(files):
        if i:
            yield SEPARATOR
        # utf-8-sig: a byte-order mark is dropped; newline=None: \r\n and \r become \n.
        with open(file, encoding="utf-8-sig", newline=None) as f:
            while True:
                try:
                    piece = f.read(_READ_CHARS)
                except UnicodeDecodeError as exc:
                    raise ValueError(f"{file} is not UTF-8 text: {exc}") from exc
                if not piece:
                    break
                yield piece


def text_path(path: str | os.PathLike) -> Path:
    """``path`` checked as a corpus without reading it whole: FileNotFoundError for a
    missing path, ValueError when its text is empty (read only up to the first non-space)."""
    path = Path(path)
    files = _text_files(path)
    if not any(not piece.isspace() for piece in _iter_text(path, files)):
        raise ValueError(f"{path} is empty (no text to train on)")
    return path


def iter_text(path: str | os.PathLike) -> Iterator[str]:
    """The text ``read_text`` returns, in pieces of at most a million characters, read as
    they are needed: a corpus larger than the memory streams through."""
    path = Path(path)
    return _iter_text(path, _text_files(path))


def iter_chunks(path: str | os.PathLike) -> Iterator[str]:
    """The text of ``path`` cut into token-safe chunks (``chunk_text``), read as they are
    needed: what a tokenizer trains on. The chunks are those of the whole text as one
    string, so the tokenizer is the same."""
    return chunk_text(iter_text(path), _CHUNK_CHARS)


def read_text(path: str | os.PathLike) -> str:
    """Text of a UTF-8 file, or of every .txt file under a folder joined by a blank line.

    Files are taken in sorted order of their path (recursively). Raises
    FileNotFoundError for a missing path and ValueError for an empty corpus or a
    file that is not UTF-8.
    """
    path = Path(path)
    text = "".join(_iter_text(path, _text_files(path)))
    if not text.strip():
        raise ValueError(f"{path} is empty (no text to train on)")
    return text


# ---------------------------------------------------------------------- tokens


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype holding ids ``0 .. vocab_size - 1``: uint16 or uint32."""
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32 token ids")


def default_cache_dir() -> Path:
    """$NUMPYLLM_CACHE, else $XDG_CACHE_HOME/numpyllm, else ~/.cache/numpyllm."""
    if os.environ.get("NUMPYLLM_CACHE"):
        return Path(os.environ["NUMPYLLM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "numpyllm"


def _cache_key(pieces: Iterable[str], tokenizer: Tokenizer) -> tuple[str, int, bool]:
    """(hash of format + tokenizer + text, number of characters, text has non-space)."""
    digest = hashlib.sha256(_CACHE_FORMAT + b"\0")
    # Canonical JSON, so the same tokenizer saved with keys in another order keys the same.
    canonical = json.dumps(json.loads(tokenizer.to_json()), sort_keys=True)
    digest.update(canonical.encode("utf-8") + b"\0")
    n_chars, has_text = 0, False
    for piece in pieces:
        digest.update(piece.encode("utf-8", "surrogatepass"))
        n_chars += len(piece)
        has_text = has_text or not piece.isspace()
    return digest.hexdigest()[:40], n_chars, has_text


def _encode_to_npy(
    pieces: Iterable[str],
    tokenizer: Tokenizer,
    target: Path,
    n_chars: int,
    progress: bool,
) -> None:
    """Encode text chunk by chunk to ``target`` (.npy), never holding all ids in memory.

    Ids go to a raw temp file batch by batch; once their count is known the .npy
    header is written and the raw ids copied after it, then the file is moved into
    place with os.replace, so an interrupted run leaves no half-written cache.
    """
    dtype = token_dtype(tokenizer.vocab_size)
    raw_fd, raw_path = tempfile.mkstemp(dir=target.parent, suffix=".ids.tmp")
    npy_path = None
    try:
        n_ids = 0
        with os.fdopen(raw_fd, "wb") as raw:
            bar = tqdm(
                total=n_chars, desc="encoding", unit="char", unit_scale=True, disable=not progress
            )
            with bar:
                chunks = chunk_text(pieces, _CHUNK_CHARS)
                while batch := list(itertools.islice(chunks, _CHUNKS_PER_BATCH)):
                    encoded = tokenizer.encode_batch(batch, add_special_tokens=False)
                    count = sum(len(ids) for ids in encoded)
                    ids = np.fromiter(itertools.chain.from_iterable(encoded), dtype, count)
                    ids.tofile(raw)
                    n_ids += count
                    bar.update(sum(len(chunk) for chunk in batch))
        npy_fd, npy_path = tempfile.mkstemp(dir=target.parent, suffix=".npy.tmp")
        with os.fdopen(npy_fd, "wb") as npy, open(raw_path, "rb") as raw:
            header = {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": False,
                "shape": (n_ids,),
            }
            np.lib.format.write_array_header_1_0(npy, header)
            shutil.copyfileobj(raw, npy, length=_COPY_BYTES)
        os.replace(npy_path, target)
    finally:
        for tmp in (raw_path, npy_path):
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)


def _load_cache(path: Path, dtype: np.dtype) -> np.ndarray | None:
    """Memory-map a cached id file, or None if it is missing or not what we wrote."""
    if not path.is_file():
        return None
    try:
        ids = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None  # truncated or foreign file: encode again and overwrite it
    if ids.ndim != 1 or ids.dtype != dtype:
        return None
    return ids


def _check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


class TokenDataset:
    """Token ids of a text, cached on disk, split into train / val, served as batches.

    Args:
        text: the corpus (see also :meth:`from_path`, :meth:`from_ids`).
        tokenizer: the :class:`~numpyllm.tokenizer.Tokenizer` to encode with.
        cache_dir: folder for the cached ids (default :func:`default_cache_dir`).
        val_fraction: share of the ids, taken from the end, used for validation.
        progress: show a progress bar while encoding (default: for long texts).

    Attributes: ``tokens`` (all ids, memory-mapped), ``train`` and ``val`` (views of
    it), ``vocab_size``, ``cache_path``, ``from_cache`` (True when the ids were
    loaded rather than encoded), ``n_chars`` (characters of the text).
    """

    cache_path: Path | None  # None for a dataset made from ids
    from_cache: bool
    n_chars: int | None  # None for a dataset made from ids

    def __init__(
        self,
        text: str,
        tokenizer: Tokenizer,
        *,
        cache_dir: str | os.PathLike | None = None,
        val_fraction: float = 0.1,
        progress: bool | None = None,
    ) -> None:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")

        def pieces() -> Iterator[str]:
            return (text[i : i + _READ_CHARS] for i in range(0, len(text), _READ_CHARS))

        self._encode(pieces, "text", tokenizer, cache_dir, val_fraction, progress)

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike,
        tokenizer: Tokenizer,
        *,
        cache_dir: str | os.PathLike | None = None,
        val_fraction: float = 0.1,
        progress: bool | None = None,
    ) -> TokenDataset:
        """Like ``TokenDataset(read_text(path), ...)`` (same ids, same cache file) but
        streamed: files are read piece by piece, never held in memory whole."""
        path = Path(path)
        files = _text_files(path)
        dataset = cls.__new__(cls)
        dataset._encode(
            lambda: _iter_text(path, files), str(path), tokenizer, cache_dir, val_fraction, progress
        )
        return dataset

    @classmethod
    def from_ids(
        cls,
        ids: np.ndarray | Iterable[int],
        vocab_size: int | None = None,
        *,
        val_fraction: float = 0.1,
    ) -> TokenDataset:
        """A dataset over ids already in hand (no tokenizer, no cache).

        ``vocab_size`` defaults to the largest id + 1.
        """
        ids = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"ids must be a non-empty 1-D array, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
        low, high = int(ids.min()), int(ids.max())
        vocab_size = high + 1 if vocab_size is None else int(vocab_size)
        if low < 0 or high >= vocab_size:
            raise ValueError(f"ids must be in 0..{vocab_size - 1}, got ids from {low} to {high}")
        dataset = cls.__new__(cls)
        dataset.cache_path, dataset.from_cache, dataset.n_chars = None, False, None
        dataset._set_tokens(ids, vocab_size, val_fraction)
        return dataset

    def _encode(
        self,
        pieces: Callable[[], Iterable[str]],
        name: str,
        tokenizer: Tokenizer,
        cache_dir: str | os.PathLike | None,
        val_fraction: float,
        progress: bool | None,
    ) -> None:
        """Load the cached ids of the text ``pieces()`` yields, or encode and cache them."""
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(
                f"tokenizer must be a numpyllm Tokenizer, got {type(tokenizer).__name__}"
            )
        _check_val_fraction(val_fraction)
        key, n_chars, has_text = _cache_key(pieces(), tokenizer)
        if not has_text:
            raise ValueError(f"{name} is empty (no text to train on)")
        self.n_chars = n_chars
        cache_dir = Path(default_cache_dir() if cache_dir is None else cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.cache_path = cache_dir / f"tokens-{key}.npy"
        dtype = token_dtype(tokenizer.vocab_size)
        ids = _load_cache(self.cache_path, dtype)
        self.from_cache = ids is not None
        if ids is None:
            show = n_chars >= _PROGRESS_CHARS if progress is None else progress
            _encode_to_npy(pieces(), tokenizer, self.cache_path, n_chars, show)
            ids = _load_cache(self.cache_path, dtype)
            if ids is None:
                raise ValueError(f"could not read back the token cache {self.cache_path}")
        self._set_tokens(ids, tokenizer.vocab_size, val_fraction)

    def _set_tokens(self, ids: np.ndarray, vocab_size: int, val_fraction: float) -> None:
        _check_val_fraction(val_fraction)
        self.tokens = ids.view(np.ndarray)  # a plain array view (still memory-mapped)
        self.vocab_size = int(vocab_size)
        self.val_fraction = float(val_fraction)
        n_val = round(len(ids) * val_fraction)  # contiguous: the last ids, rounded
        self.train = self.tokens[: len(ids) - n_val]
        self.val = self.tokens[len(ids) - n_val :]

    # ------------------------------------------------------------------ batches

    def split_tokens(self, split: str) -> np.ndarray:
        """The ids of ``split`` ("train" or "val")."""
        if split == "train":
            return self.train
        if split == "val":
            return self.val
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

    def _tokens_for(self, split: str, length: int, what: str) -> np.ndarray:
        tokens = self.split_tokens(split)
        if len(tokens) < length:
            raise ValueError(
                f"the {split!r} split has {len(tokens)} tokens, fewer than the {length} "
                f"that {what} needs; use a shorter sequence or more text"
            )
        return tokens

    def sample_windows(
        self, split: str, batch_size: int, length: int, rng: np.random.Generator
    ) -> np.ndarray:
        """``batch_size`` windows of ``length`` consecutive ids at random starts: (B, length) int64.

        Starts are uniform over every position where a whole window fits inside the
        split; the same generator state gives the same windows.
        """
        batch_size = _check_positive_int(batch_size, "batch_size")
        length = _check_positive_int(length, "length")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        tokens = self._tokens_for(split, length, f"a window of length {length}")
        starts = rng.integers(0, len(tokens) - length + 1, size=batch_size)  # (B,)
        index = starts[:, None] + np.arange(length)  # (B, 1) + (length,) -> (B, length)
        return np.array(tokens[index], dtype=np.int64)

    def get_batch(
        self, split: str, batch_size: int, seq_len: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Random (inputs, targets), each (B, seq_len) int64, with targets[:, t] = inputs[:, t+1].

        Built on ``sample_windows(split, batch_size, seq_len + 1, rng)``: the split
        needs at least seq_len + 1 tokens.
        """
        seq_len = _check_positive_int(seq_len, "seq_len")
        tokens = self.split_tokens(split)
        if len(tokens) < seq_len + 1:
            raise ValueError(
                f"the {split!r} split has {len(tokens)} tokens; a batch with seq_len={seq_len} "
                f"needs at least {seq_len + 1} (seq_len + 1 for the shifted targets)"
            )
        windows = self.sample_windows(split, batch_size, seq_len + 1, rng)  # (B, T+1)
        return np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])

    def iter_windows(self, split: str, batch_size: int, length: int) -> Iterator[np.ndarray]:
        """Consecutive windows of ``length`` ids, in batches of up to ``batch_size``: (b, length).

        Window k starts at k * (length - 1): each window shares its first id with the
        last id of the one before, so when a model scores ``w[:, 1:]`` from
        ``w[:, :-1]`` (labels shifted inside the model) every id of the split after the
        first is scored exactly once. The last ``< length - 1`` ids that do not fill a
        window are left out; the last batch may be smaller.
        """
        batch_size = _check_positive_int(batch_size, "batch_size")
        length = _check_positive_int(length, "length")
        if length < 2:
            raise ValueError(f"length must be >= 2 (an input and a target), got {length}")
        tokens = self._tokens_for(split, length, f"a window of length {length}")
        stride = length - 1
        starts = np.arange((len(tokens) - 1) // stride) * stride  # (W,)
        offsets = np.arange(length)
        for first in range(0, len(starts), batch_size):
            index = starts[first : first + batch_size, None] + offsets  # (b, length)
            yield np.array(tokens[index], dtype=np.int64)

    def iter_batches(
        self, split: str, batch_size: int, seq_len: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Consecutive (inputs, targets) for evaluation, each (b, seq_len) int64.

        Inputs of successive rows are non-overlapping, back-to-back stretches of the
        split (rows k: ids k*seq_len .. (k+1)*seq_len - 1), targets the same shifted
        by one, so every target is predicted once.
        """
        seq_len = _check_positive_int(seq_len, "seq_len")
        for windows in self.iter_windows(split, batch_size, seq_len + 1):
            yield np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])

    def unigram_baseline_loss(self, split: str = "val") -> float:
        """Cross-entropy (nats per token) on ``split`` of unigram frequencies from train.

        p(v) = (count_train(v) + 1) / (N_train + V)   (add-one smoothing over the vocab)
        loss = -(1 / N_split) * sum_t log p(x_t)

        A model that has learnt nothing about context scores about this; anything
        that trains should beat it.
        """
        tokens = self.split_tokens(split)
        if len(tokens) == 0:
            raise ValueError(f"the {split!r} split is empty (val_fraction={self.val_fraction})")
        counts_train = _bincount(self.train, self.vocab_size)  # (V,)
        log_p = np.log(counts_train + 1.0) - np.log(len(self.train) + self.vocab_size)  # (V,)
        counts_split = _bincount(tokens, self.vocab_size)  # (V,)
        return float(-(counts_split @ log_p) / len(tokens))

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return (
            f"TokenDataset({len(self.tokens)} tokens: train {len(self.train)}, "
            f"val {len(self.val)}; vocab_size={self.vocab_size})"
        )


def _bincount(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Counts of each id, a block at a time (bincount copies its input to int64)."""
    counts = np.zeros(vocab_size, dtype=np.float64)
    block = 1 << 18  # 2 MiB of int64 at a time
    for first in range(0, len(ids), block):
        counts += np.bincount(ids[first : first + block], minlength=vocab_size)
    return counts


def _check_val_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
