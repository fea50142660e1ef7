"""Tests for numpyllm.tokenizer: byte-level BPE, char-level, loading/saving, errors."""

import json

import numpy as np
import pytest
import tokenizers
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.data import builtin_corpus
from numpyllm.tokenizer import Tokenizer, chunk_text

CHAR_TEXT = "hello world\nthe quick brown fox, 42 times! é 😀"


@pytest.fixture(scope="module")
def corpus() -> str:
    return builtin_corpus()[:100_000]


@pytest.fixture(scope="module")
def bpe(corpus) -> Tokenizer:
    return Tokenizer.train_bpe(corpus, vocab_size=600)


@pytest.fixture(scope="module")
def chars() -> Tokenizer:
    return Tokenizer.char_level(CHAR_TEXT)


# ------------------------------------------------------------------ byte-level BPE


@given(text=st.text())
def test_bpe_round_trips_any_unicode(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


def test_bpe_round_trips_text_it_never_saw(bpe):
    text = "日本語のテキスト ✓ \x00\x7f \U0001f600\r\n\ttab"
    ids = bpe.encode(text)
    assert bpe.unk_token_id is None  # byte-level needs no unknown token
    assert bpe.decode(ids) == text
    # Unseen characters fall back to their UTF-8 bytes: at most one token per byte.
    assert len(bpe.encode("日本")) <= len("日本".encode())


@given(text=st.text(max_size=200))
def test_tokenize_then_convert_equals_encode(bpe, text):
    tokens = bpe.tokenize(text)
    assert bpe.convert_tokens_to_ids(tokens) == bpe.encode(text)
    assert bpe.convert_ids_to_tokens(bpe.encode(text)) == tokens


def test_tokenize_example(bpe):
    tokens = bpe.tokenize("Hello, world!")
    assert "".join(tokens) == "Hello,Ġworld!"  # Ġ is the byte-level stand-in for a space
    ids = bpe.convert_tokens_to_ids(tokens)
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    assert bpe.convert_tokens_to_ids(tokens[0]) == ids[0]
    assert bpe.convert_ids_to_tokens(ids[0]) == tokens[0]


def test_bpe_special_token_ids(bpe):
    assert (bpe.eos_token_id, bpe.pad_token_id, bpe.mask_token_id) == (0, 1, 2)
    assert (bpe.eos_token, bpe.pad_token, bpe.mask_token) == ("<|endoftext|>", "<pad>", "<mask>")
    assert bpe.bos_token_id == bpe.eos_token_id  # GPT-2's convention
    assert bpe.unk_token_id is None and bpe.cls_token_id is None
    assert bpe.all_special_ids == [0, 1, 2]


def test_special_tokens_in_text_become_single_ids(bpe):
    text = "one<|endoftext|>two<pad><mask>"
    ids = bpe.encode(text)
    assert ids.count(0) == 1 and ids.count(1) == 1 and ids.count(2) == 1
    assert bpe.decode(ids) == text
    assert bpe.decode(ids, skip_special_tokens=True) == "onetwo"


def test_custom_special_tokens(corpus):
    tok = Tokenizer.train_bpe(corpus[:5000], vocab_size=300, special_tokens=("</s>", "[MASK]"))
    assert (tok.eos_token_id, tok.mask_token_id, tok.pad_token_id) == (0, 1, None)
    none = Tokenizer.train_bpe(corpus[:5000], vocab_size=300, special_tokens=())
    assert none.eos_token_id is None and none.pad_token_id is None and none.mask_token_id is None
    assert none.vocab_size == 300


@pytest.mark.parametrize("requested", [300, 600, 100_000])
def test_bpe_vocab_size_is_honoured(corpus, requested):
    tok = Tokenizer.train_bpe(corpus[:20_000], vocab_size=requested)
    assert 256 + 3 < tok.vocab_size <= requested
    assert len(tok) == tok.vocab_size == len(tok.get_vocab())
    if requested < 1000:  # enough text to fill a small vocabulary exactly
        assert tok.vocab_size == requested


def test_bigger_vocab_compresses_more(corpus):
    small = Tokenizer.train_bpe(corpus, vocab_size=300)
    large = Tokenizer.train_bpe(corpus, vocab_size=1000)
    text = corpus[:5000]
    assert len(large.encode(text)) < len(small.encode(text)) < len(text.encode())


def test_train_on_list_of_documents():
    docs = ["the cat sat on the mat"] * 20 + ["the dog sat on the log"] * 20
    tok = Tokenizer.train_bpe(docs, vocab_size=300, min_frequency=2)
    assert "Ġsat" in tok.get_vocab()
    assert tok.tokenize("the cat") == ["the", "Ġcat"]


def test_bpe_training_errors(corpus):
    with pytest.raises(ValueError, match="at least 259"):
        Tokenizer.train_bpe(corpus, vocab_size=200)
    with pytest.raises(TypeError, match="vocab_size"):
        Tokenizer.train_bpe(corpus, vocab_size=300.0)
    with pytest.raises(TypeError, match="training expects a str"):
        Tokenizer.train_bpe(["ok", 3], vocab_size=300)
    with pytest.raises(ValueError, match="distinct"):
        Tokenizer.train_bpe(corpus, vocab_size=300, special_tokens=("<a>", "<a>"))
    with pytest.raises(TypeError, match="single str"):
        Tokenizer.train_bpe(corpus, vocab_size=300, special_tokens="<a>")


# ------------------------------------------------------------------ character level

ALPHABET = sorted(set(CHAR_TEXT))


@given(text=st.text(alphabet=ALPHABET))
def test_char_level_round_trips_its_alphabet(chars, text):
    ids = chars.encode(text)
    assert len(ids) == len(text)  # one id per character, astral ones included
    assert chars.unk_token_id not in ids
    assert chars.decode(ids) == text


def test_char_level_vocabulary_layout(chars):
    vocab = chars.get_vocab()
    specials = ["<|endoftext|>", "<pad>", "<mask>", "<unk>"]
    assert [vocab[t] for t in specials] == [0, 1, 2, 3]
    assert [vocab[c] for c in ALPHABET] == list(range(4, 4 + len(ALPHABET)))
    assert chars.vocab_size == 4 + len(ALPHABET)
    assert chars.tokenize("he\n😀") == ["h", "e", "\n", "😀"]
    assert (chars.eos_token_id, chars.pad_token_id, chars.mask_token_id) == (0, 1, 2)


def test_char_level_unknown_characters(chars):
    ids = chars.encode("hZe§")
    assert ids[1] == ids[3] == chars.unk_token_id == 3
    assert chars.decode(ids) == "h<unk>e<unk>"
    assert chars.decode(ids, skip_special_tokens=True) == "he"
    assert chars.convert_tokens_to_ids("Z") == chars.unk_token_id


def test_char_level_custom_unk_and_many_texts():
    tok = Tokenizer.char_level(["ab", "bc"], special_tokens=("[PAD]",), unk_token="?")
    assert tok.get_vocab() == {"[PAD]": 0, "?": 1, "a": 2, "b": 3, "c": 4}
    assert tok.unk_token == "?" and tok.pad_token_id == 0
    assert tok.encode("abx") == [2, 3, 1]


# ------------------------------------------------------------------ save / load


def test_save_load_file_keeps_ids(bpe, tmp_path, corpus):
    path = bpe.save(tmp_path / "tok.json")
    assert path == tmp_path / "tok.json"
    loaded = Tokenizer.load(path)
    text = corpus[:3000] + "∑ 😀 <|endoftext|>"
    assert loaded.encode(text) == bpe.encode(text)
    assert loaded.get_vocab() == bpe.get_vocab()
    assert loaded.special_tokens == bpe.special_tokens
    assert Tokenizer.from_file(path).encode(text) == bpe.encode(text)


def test_save_load_folder_keeps_roles(chars, tmp_path):
    custom = Tokenizer(chars.backend, special_tokens={"eos": "<pad>", "mask": None})
    file = custom.save(tmp_path / "tok")
    assert file == tmp_path / "tok" / "tokenizer.json"
    saved_map = json.loads((tmp_path / "tok" / "special_tokens_map.json").read_text())
    assert saved_map["eos_token"] == "<pad>" and "mask_token" not in saved_map
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.eos_token_id == 1 and loaded.mask_token_id is None
    assert loaded.encode(CHAR_TEXT) == chars.encode(CHAR_TEXT)


def test_load_reads_hugging_face_special_token_files(bpe, tmp_path):
    bpe.save(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<mask>"}))
    (tmp_path / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": {"content": "<pad>", "special": True}, "unk_token": "<nope>"})
    )
    loaded = Tokenizer.load(tmp_path)
    assert loaded.eos_token_id == 1 and loaded.pad_token_id == 2
    assert loaded.unk_token_id is None  # a token missing from the vocabulary is ignored
    # The files list every role (as transformers reads them): roles they omit are absent.
    assert loaded.mask_token_id is None and loaded.bos_token_id is None
    # Files that name no role (GPT-2's config) leave the roles to the token names.
    (tmp_path / "special_tokens_map.json").unlink()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}))
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.special_tokens == bpe.special_tokens


def test_load_bert_style_tokenizer(tmp_path):
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "hello": 5, "world": 6}
    backend = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    backend.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    backend.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.load(tmp_path)
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id) == (0, 1, 2)
    assert (tok.sep_token_id, tok.mask_token_id, tok.eos_token_id) == (3, 4, None)
    assert tok.encode("hello there world") == [5, 1, 6]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Tokenizer.load(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer.load(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        Tokenizer.load(tmp_path / "bad.json")


def test_role_override_errors(chars):
    with pytest.raises(ValueError, match="unknown special-token role"):
        Tokenizer(chars.backend, special_tokens={"start": "<pad>"})
    with pytest.raises(ValueError, match="not in the vocabulary"):
        Tokenizer(chars.backend, special_tokens={"eos": "</s>"})
    with pytest.raises(TypeError, match="tokenizers.Tokenizer"):
        Tokenizer("not a backend")


# ------------------------------------------------------------------ API and errors


def test_call_and_batches(bpe):
    texts = ["first text", "and a second, longer one", ""]
    assert bpe("first text") == {"input_ids": bpe.encode("first text")}
    assert bpe(texts) == {"input_ids": [bpe.encode(t) for t in texts]}
    assert bpe.encode_batch(texts) == bpe.batch_encode(texts) == [bpe.encode(t) for t in texts]
    assert bpe.decode_batch([bpe.encode(t) for t in texts]) == texts


def test_decode_accepts_numpy_ids(bpe):
    ids = bpe.encode("numpy arrays of ids")
    for dtype in (np.int64, np.int32, np.uint16):
        assert bpe.decode(np.array(ids, dtype=dtype)) == "numpy arrays of ids"
    assert bpe.decode([]) == ""
    rows = np.array([ids, ids])
    assert bpe.decode_batch(rows) == ["numpy arrays of ids"] * 2


def test_bad_inputs(bpe):
    for bad in (123, b"bytes", None, ["a list"]):
        with pytest.raises(TypeError, match="encode expects a str"):
            bpe.encode(bad)
    with pytest.raises(TypeError, match="tokenize expects a str"):
        bpe.tokenize(5)
    with pytest.raises(TypeError, match="single str"):
        bpe.encode_batch("one string")
    v = bpe.vocab_size
    with pytest.raises(ValueError, match=rf"token id {v} is out of range for vocab_size {v}"):
        bpe.decode([1, v])
    with pytest.raises(ValueError, match="token id -1"):
        bpe.decode(np.array([-1, 2]))
    with pytest.raises(ValueError, match="out of range"):
        bpe.convert_ids_to_tokens(v + 7)
    with pytest.raises(TypeError, match="integers"):
        bpe.decode([1.5, 2.0])
    with pytest.raises(TypeError, match="1-D"):
        bpe.decode(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="not in the vocabulary"):
        bpe.convert_tokens_to_ids("no such token")


def test_an_id_the_vocabulary_skips_is_an_error_not_none():
    from tokenizers.models import WordLevel

    backend = tokenizers.Tokenizer(WordLevel({"a": 0, "c": 2, "[UNK]": 3}, unk_token="[UNK]"))
    tok = Tokenizer(backend)
    assert tok.convert_ids_to_tokens([0, 2]) == ["a", "c"]
    with pytest.raises(ValueError, match="token id 1 has no token"):
        tok.convert_ids_to_tokens(1)
    with pytest.raises(TypeError, match="bool"):
        tok.convert_ids_to_tokens(True)


# ------------------------------------------------------------------ chunking


@given(text=st.text(), size=st.integers(1, 50))
def test_chunks_concatenate_to_the_text(text, size):
    chunks = list(chunk_text(text, chunk_chars=size))
    assert "".join(chunks) == text
    assert all(chunks)
    # Pieces given one at a time are chunked as their concatenation.
    pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
    assert "".join(chunk_text(pieces, chunk_chars=size)) == text


WHITESPACE_HEAVY_ALPHABET = list("ab1.' \n\té")
WHITESPACE_HEAVY = st.lists(
    st.sampled_from(WHITESPACE_HEAVY_ALPHABET + ["<pad>"]), max_size=200
).map("".join)


@pytest.fixture(scope="module")
def whitespace_bpe() -> Tokenizer:
    # Trained on the same kind of text it is tested on, so runs of spaces, tabs and
    # newlines have their own merged tokens and any change in how a cut groups them
    # changes the ids.
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(WHITESPACE_HEAVY_ALPHABET, size=40_000))
    return Tokenizer.train_bpe(text, vocab_size=1500)


@given(text=WHITESPACE_HEAVY, size=st.integers(1, 12))
def test_encoding_chunks_equals_encoding_the_whole(whitespace_bpe, chars, text, size):
    for tok in (whitespace_bpe, chars):
        pieces = list(chunk_text(text, chunk_chars=size))
        assert [i for piece in pieces for i in tok.encode(piece)] == tok.encode(text)


def test_chunks_stay_near_the_requested_size(corpus):
    chunks = list(chunk_text(corpus, chunk_chars=1000))
    assert len(chunks) > 50
    assert max(len(c) for c in chunks[:-1]) < 2000  # prose has a place to cut every line


def test_naive_line_chunks_would_change_ids(bpe):
    # Why chunk_text exists: cutting after every newline changes GPT-2-style ids.
    text = "if x:\n    return 1\n\n\nend"
    naive = [i for line in text.splitlines(keepends=True) for i in bpe.encode(line)]
    assert naive != bpe.encode(text)
    safe = [i for piece in chunk_text(text, chunk_chars=1) for i in bpe.encode(piece)]
    assert safe == bpe.encode(text)


def test_chunks_never_start_with_a_special_token(whitespace_bpe):
    # Special tokens are split off before pre-tokenization, so the spaces before one
    # group as a run that ends the text: a cut inside that run would change the ids.
    text = "a\n\n<pad>b \t\n<pad>\n<pad>"
    pieces = list(chunk_text(text, chunk_chars=1))
    assert not any(piece.startswith(("\n<pad>", "<pad>")) for piece in pieces)
    assert [i for piece in pieces for i in whitespace_bpe.encode(piece)] == whitespace_bpe.encode(
        text
    )
