"""Tokenizers: text <-> token ids, as a thin wrapper over the ``tokenizers`` library.

One class, :class:`Tokenizer`, wraps a ``tokenizers.Tokenizer`` (the fast Rust
implementation behind Hugging Face's ``*TokenizerFast`` classes) and gives it the
familiar ``transformers``-style surface::

    tok = Tokenizer.train_bpe(text, vocab_size=4096)   # byte-level BPE, like GPT-2
    tok = Tokenizer.char_level(text)                   # one token per character
    tok = Tokenizer.load("path/to/gpt2")               # any tokenizer.json (file or folder)

    tokens = tok.tokenize("Hello, world!")   # e.g. ['H', 'e', 'llo', ',', 'Ġwor', 'ld', '!']
    ids = tok.convert_tokens_to_ids(tokens)  # same as tok.encode("Hello, world!")
    tok.decode(ids) == "Hello, world!"

The byte-level BPE starts from an alphabet of all 256 bytes, so *every* Unicode
string encodes without an unknown token and decodes back to itself exactly.

Special tokens have roles (``eos``, ``pad``, ``mask``, ``unk``, ``bos``, ``cls``,
``sep``). A tokenizer.json has no field for roles, so they are found by name among
the special tokens (``<|endoftext|>`` is GPT-2's end of text *and* start of text,
``[MASK]`` is BERT's mask, ``</s>`` is T5's end of sequence, ...), read from the
``special_tokens_map.json`` / ``tokenizer_config.json`` that Hugging Face keeps
beside a ``tokenizer.json``, or given explicitly. A role that is absent has id None.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers

__all__ = ["Tokenizer", "chunk_text", "DEFAULT_SPECIAL_TOKENS"]

DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<pad>", "<mask>")

ROLES: tuple[str, ...] = ("bos", "eos", "unk", "pad", "mask", "cls", "sep")

# Names that mark a special token's role, most specific first. GPT-2 uses one token,
# <|endoftext|>, both to end a document and to start one, hence its place under bos.
_ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "bos": ("<|bos|>", "<bos>", "<s>", "[BOS]", "<|startoftext|>", "<|endoftext|>"),
    "eos": ("<|endoftext|>", "<|eos|>", "<eos>", "</s>", "[EOS]"),
    "unk": ("<unk>", "<|unk|>", "[UNK]"),
    "pad": ("<pad>", "<|pad|>", "[PAD]"),
    "mask": ("<mask>", "<|mask|>", "[MASK]"),
    "cls": ("[CLS]", "<cls>"),
    "sep": ("[SEP]", "<sep>"),
}

# Where text can be cut into chunks that encode, one by one, to exactly the ids of the
# whole text, for GPT-2-style byte-level BPE (its pre-tokenizer regex ends in
# `\s+(?!\S)|\s+`) and for tokenizers that split on whitespace or on every character:
#   1. after a lone "\n" standing between two non-space characters ("end.\nNext");
#   2. before the last character of a run of two or more of " ", "\t", "\n"
#      ("end.\n|\nNext"): the whole text also ends a token there, because `\s+(?!\S)`
#      backs off the last space of a run to leave it for the word after.
# The character after the cut must be a letter, digit or other word character, so a
# special token such as "<|endoftext|>" never begins a chunk (special tokens are split
# off before pre-tokenization, which would change how the spaces before them group).
_CUT = re.compile(r"(?<=\S\n)(?=[^\W_])|(?<=[\t\n ])(?=[\t\n ][^\W_])")


def chunk_text(pieces: str | Iterable[str], chunk_chars: int = 1 << 15) -> Iterator[str]:
    """Cut text into chunks of about ``chunk_chars`` characters at token-safe places.

    ``pieces`` is one string or an iterable of strings whose concatenation is the
    text (e.g. blocks read from a file): the chunks concatenate back to that text.
    Encoding the chunks one by one and concatenating the ids gives the ids of the
    whole text for byte-level BPE with GPT-2's pattern (no prefix space), for
    character-level and for whitespace-splitting tokenizers (see the cut rules
    above). Text with no safe place to cut stays in one chunk.
    """
    if isinstance(pieces, str):
        pieces = (pieces,)
    buffer, start = "", 0
    for piece in pieces:
        buffer = buffer[start:] + piece  # only the unconsumed tail is copied
        start = 0
        while len(buffer) - start > chunk_chars:
            match = _CUT.search(buffer, start + chunk_chars)
            if match is None:
                break  # wait for more text: the next piece may bring a place to cut
            yield buffer[start : match.start()]
            start = match.start()
    if start < len(buffer):
        yield buffer[start:]


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + os.replace (never half-written)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _token_content(value: Any) -> str | None:
    """A special token as Hugging Face's json files write it: "tok" or {"content": "tok"}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _roles_from_hf_files(folder: Path) -> tuple[dict[str, str], bool]:
    """Special-token roles from tokenizer_config.json, then special_tokens_map.json.

    Returns (roles, complete): ``complete`` is True when either file names a role:
    ``transformers`` then takes the roles it lists as all the tokenizer has (older
    folders, like GPT-2's, name none and leave the roles to the token names).
    """
    roles: dict[str, str] = {}
    complete = False
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = folder / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"could not read special tokens from {file}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{file} should hold a JSON object, got {type(data).__name__}")
        for role in ROLES:
            token = _token_content(data.get(f"{role}_token"))
            if token is not None:
                roles[role] = token
                complete = True
    return roles, complete


def _role_token(role: str):
    def get(self: Tokenizer) -> str | None:
        return self._roles.get(role)

    get.__doc__ = f"The {role} token (None when this tokenizer has none)."
    return property(get)


def _role_id(role: str):
    def get(self: Tokenizer) -> int | None:
        token = self._roles.get(role)
        return None if token is None else self._backend.token_to_id(token)

    get.__doc__ = f"Id of the {role} token (None when this tokenizer has none)."
    return property(get)


class Tokenizer:
    """Text <-> ids, wrapping a ``tokenizers.Tokenizer``.

    Args:
        backend: the ``tokenizers.Tokenizer`` doing the work.
        special_tokens: optional role -> token overrides, e.g. ``{"eos": "</s>"}``
            (roles: bos, eos, unk, pad, mask, cls, sep; a value of None removes a
            role). Roles not given are found by name among the special tokens.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        special_tokens: Mapping[str, str | None] | None = None,
    ) -> None:
        if not isinstance(backend, tokenizers.Tokenizer):
            raise TypeError(f"backend must be a tokenizers.Tokenizer, got {type(backend).__name__}")
        self._backend = backend
        self._roles = self._detect_roles()
        for role, token in (special_tokens or {}).items():
            if role not in ROLES:
                raise ValueError(f"unknown special-token role {role!r}; expected one of {ROLES}")
            if token is None:
                self._roles.pop(role, None)
            elif backend.token_to_id(token) is None:
                raise ValueError(f"{role} token {token!r} is not in the vocabulary")
            else:
                self._roles[role] = token

    def _detect_roles(self) -> dict[str, str]:
        added = self._backend.get_added_tokens_decoder().values()
        special = {token.content for token in added if token.special}
        roles = {}
        for role, names in _ROLE_NAMES.items():
            found = next((name for name in names if name in special), None)
            if found is not None:
                roles[role] = found
        model_unk = getattr(self._backend.model, "unk_token", None)
        if "unk" not in roles and model_unk and self._backend.token_to_id(model_unk) is not None:
            roles["unk"] = model_unk
        return roles

    # ----------------------------------------------------------------- constructors

    @classmethod
    def train_bpe(
        cls,
        texts: str | Iterable[str],
        vocab_size: int = 4096,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        min_frequency: int = 2,
        show_progress: bool = False,
    ) -> Tokenizer:
        """Train a byte-level BPE tokenizer (GPT-2's scheme) on ``texts``.

        Text is split by GPT-2's pre-tokenizer pattern (no prefix space), mapped to
        bytes, and the most frequent adjacent pairs are merged until the vocabulary
        (256 bytes + special tokens + merges) reaches ``vocab_size``, or no pair
        occurs ``min_frequency`` times. Special tokens get ids 0, 1, ... in order,
        the 256 bytes come next, then the merges.

        ``texts`` is one string (cut into chunks for parallel counting) or an
        iterable of strings (documents).
        """
        special = _check_special_tokens(special_tokens)
        smallest = 256 + len(special)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
            raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        if vocab_size < smallest:
            raise ValueError(
                f"vocab_size must be at least {smallest} (256 bytes + {len(special)} special "
                f"tokens), got {vocab_size}"
            )
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=int(vocab_size),
            min_frequency=int(min_frequency),
            special_tokens=list(special),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        backend.train_from_iterator(_checked_texts(texts), trainer=trainer)
        return cls(backend)

    @classmethod
    def char_level(
        cls,
        texts: str | Iterable[str],
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        unk_token: str = "<unk>",
    ) -> Tokenizer:
        """One token per Unicode character seen in ``texts``; anything else -> ``unk_token``.

        Ids: the special tokens first (in order), then ``unk_token``, then the
        characters in code-point order.
        """
        special = _check_special_tokens(special_tokens)
        if unk_token not in special:
            special = (*special, unk_token)
        chars: set[str] = set()
        for text in _checked_texts(texts):
            chars.update(text)
        vocab = {token: i for i, token in enumerate(special)}
        for char in sorted(chars - set(vocab)):
            vocab[char] = len(vocab)
        backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=unk_token))
        # [\s\S] is any character, newlines included: every character its own piece.
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        backend.decoder = decoders.Fuse()  # join the pieces with nothing between them
        backend.add_special_tokens(list(special))
        return cls(backend, special_tokens={"unk": unk_token})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a ``tokenizer.json`` file, or a folder holding one (e.g. a GPT-2 checkpoint).

        Beside a file named tokenizer.json, Hugging Face's ``tokenizer_config.json``
        and ``special_tokens_map.json`` give the special-token roles when they name
        any (roles they omit are then absent); otherwise the roles come from the
        tokens' names.
        """
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            where = f"no tokenizer.json in folder {path}" if path.is_dir() else str(path)
            raise FileNotFoundError(f"tokenizer file not found: {where}")
        try:
            backend = tokenizers.Tokenizer.from_file(str(file))
        except Exception as exc:  # the Rust side raises a bare Exception
            raise ValueError(f"{file} is not a valid tokenizer.json: {exc}") from exc
        roles: dict[str, str] = {}
        complete = False
        if file.name == "tokenizer.json":
            roles, complete = _roles_from_hf_files(file.parent)
        # A token missing from the vocabulary cannot be used: drop it (transformers would
        # add it as a new token, which would change the vocabulary size).
        known: dict[str, str | None] = {
            role: tok for role, tok in roles.items() if backend.token_to_id(tok) is not None
        }
        if complete:  # the files are the whole truth: roles they leave out are absent
            known = {role: known.get(role) for role in ROLES}
        return cls(backend, special_tokens=known)

    from_file = load

    def save(self, path: str | os.PathLike) -> Path:
        """Save as a ``tokenizer.json``; returns the file written.

        A path ending in ``.json`` is the file itself. Any other path is a folder
        (created if needed) that gets ``tokenizer.json`` plus Hugging Face's
        ``special_tokens_map.json`` and ``tokenizer_config.json`` recording the
        special-token roles. Both load with :meth:`load`, with ``transformers``'
        ``PreTrainedTokenizerFast`` and, as a folder, with ``AutoTokenizer``.
        """
        path = Path(path)
        if path.suffix == ".json" and not path.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(path, self.to_json())
            return path
        path.mkdir(parents=True, exist_ok=True)
        file = path / "tokenizer.json"
        _atomic_write_text(file, self.to_json())
        roles = {f"{role}_token": token for role, token in self._roles.items()}
        _atomic_write_text(path / "special_tokens_map.json", json.dumps(roles, indent=2) + "\n")
        # AutoTokenizer reads the class from here; the fast class takes tokenizer.json as is
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            **roles,
        }
        _atomic_write_text(path / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
        return file

    def to_json(self) -> str:
        """The tokenizer.json text (also what the data cache is keyed on)."""
        return self._backend.to_str()

    # ----------------------------------------------------------------- vocabulary

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included: every id is in ``range(vocab_size)``."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        """Token -> id for the whole vocabulary."""
        return self._backend.get_vocab(with_added_tokens=True)

    @property
    def special_tokens(self) -> dict[str, str]:
        """Role -> token for the roles this tokenizer has, e.g. {"eos": "<|endoftext|>"}."""
        return dict(self._roles)

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of every special token (those ``skip_special_tokens`` removes)."""
        added = self._backend.get_added_tokens_decoder()
        return sorted(i for i, token in added.items() if token.special)

    bos_token = _role_token("bos")
    eos_token = _role_token("eos")
    unk_token = _role_token("unk")
    pad_token = _role_token("pad")
    mask_token = _role_token("mask")
    cls_token = _role_token("cls")
    sep_token = _role_token("sep")
    bos_token_id = _role_id("bos")
    eos_token_id = _role_id("eos")
    unk_token_id = _role_id("unk")
    pad_token_id = _role_id("pad")
    mask_token_id = _role_id("mask")
    cls_token_id = _role_id("cls")
    sep_token_id = _role_id("sep")

    # ----------------------------------------------------------------- encoding

    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text`` (no special tokens added), e.g. ['Hello', 'Ġworld']."""
        _check_str(text, "tokenize")
        return self._backend.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Token(s) -> id(s). Unknown tokens map to the unk id, or raise ValueError."""
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(token) for token in tokens]

    def _token_to_id(self, token: str) -> int:
        if not isinstance(token, str):
            raise TypeError(f"tokens must be str, got {type(token).__name__}")
        token_id = self._backend.token_to_id(token)
        if token_id is None:
            token_id = self.unk_token_id
        if token_id is None:
            raise ValueError(f"token {token!r} is not in the vocabulary (and there is no unk)")
        return token_id

    def convert_ids_to_tokens(self, ids: int | Sequence[int] | np.ndarray) -> str | list[str]:
        """Id(s) -> token(s)."""
        if isinstance(ids, bool):
            raise TypeError("token ids must be integers, got a bool")
        if isinstance(ids, (int, np.integer)):
            return self._id_to_token(self._check_ids([ids])[0])
        return [self._id_to_token(i) for i in self._check_ids(ids)]

    def _id_to_token(self, token_id: int) -> str:
        token = self._backend.id_to_token(token_id)
        if token is None:  # an id inside range(vocab_size) that the vocabulary skips
            raise ValueError(f"token id {token_id} has no token in the vocabulary")
        return token

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids of ``text``. ``add_special_tokens`` applies the tokenizer's template
        (e.g. BERT's [CLS] ... [SEP]); the byte-level BPE and char-level add none."""
        _check_str(text, "encode")
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = True
    ) -> list[list[int]]:
        """Ids of each text, encoded in parallel by the Rust backend."""
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a list of str, got a single str (use encode)")
        texts = list(texts)
        for text in texts:
            _check_str(text, "encode_batch")
        # encode_batch_fast skips character offsets, which we never use (tokenizers >= 0.20).
        encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=add_special_tokens)]

    batch_encode = encode_batch

    def __call__(self, text: str | Sequence[str]) -> dict[str, list]:
        """{"input_ids": ids} for a str, {"input_ids": [ids, ...]} for a list of str."""
        if isinstance(text, str):
            return {"input_ids": self.encode(text)}
        return {"input_ids": self.encode_batch(text)}

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (a 1-D sequence); special tokens kept unless skipped."""
        return self._backend.decode(self._check_ids(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(
        self, sequences: Sequence[Sequence[int]] | np.ndarray, skip_special_tokens: bool = False
    ) -> list[str]:
        """Text of each id sequence (rows of a 2-D array, or a list of lists)."""
        checked = [self._check_ids(ids) for ids in sequences]
        return self._backend.decode_batch(checked, skip_special_tokens=skip_special_tokens)

    def _check_ids(self, ids: Sequence[int] | np.ndarray) -> list[int]:
        """Validate a 1-D sequence of ids and return it as a list of Python ints."""
        array = np.asarray(ids)
        if array.ndim != 1:
            raise TypeError(
                f"expected a 1-D sequence of token ids, got an array of shape {array.shape}"
            )
        if array.size == 0:
            return []
        if not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"token ids must be integers, got dtype {array.dtype}")
        vocab_size = self.vocab_size
        bad = array[(array < 0) | (array >= vocab_size)]
        if bad.size:
            raise ValueError(
                f"token id {int(bad[0])} is out of range for vocab_size {vocab_size} "
                f"(valid ids are 0..{vocab_size - 1})"
            )
        return array.tolist()

    def __repr__(self) -> str:
        model = type(self._backend.model).__name__
        return f"Tokenizer({model}, vocab_size={self.vocab_size}, special_tokens={self._roles})"


def _check_str(text: Any, what: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{what} expects a str, got {type(text).__name__}")


def _check_special_tokens(special_tokens: Sequence[str]) -> tuple[str, ...]:
    if isinstance(special_tokens, str):
        raise TypeError("special_tokens must be a sequence of str, got a single str")
    special = tuple(special_tokens)
    for token in special:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special tokens must be non-empty str, got {token!r}")
    if len(set(special)) != len(special):
        raise ValueError(f"special tokens must be distinct, got {special}")
    return special


def _checked_texts(texts: str | Iterable[str]) -> Iterator[str]:
    """One str (cut into chunks so the trainer can count in parallel) or many, checked."""
    if isinstance(texts, str):
        yield from chunk_text(texts)
        return
    if not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a str or an iterable of str, got {type(texts).__name__}")
    for text in texts:
        _check_str(text, "training")
        yield text
