"""Tests for numpyllm.data: corpora, the token cache, splits and batches."""

import math
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm import data
from numpyllm.data import TokenDataset, builtin_corpus, read_text, token_dtype
from numpyllm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def corpus() -> str:
    return builtin_corpus()[:60_000]


@pytest.fixture(scope="module")
def tok(corpus) -> Tokenizer:
    return Tokenizer.train_bpe(corpus, vocab_size=500)


@pytest.fixture
def count_encodes(monkeypatch):
    """Counts calls to Tokenizer.encode_batch (the only way the dataset encodes)."""
    calls = []
    original = Tokenizer.encode_batch

    def counting(self, texts, add_special_tokens=True):
        calls.append(len(texts))
        return original(self, texts, add_special_tokens=add_special_tokens)

    monkeypatch.setattr(Tokenizer, "encode_batch", counting)
    return calls


def arange_dataset(n: int, val_fraction: float = 0.1) -> TokenDataset:
    """Token i at position i: a window's values say where it came from."""
    return TokenDataset.from_ids(np.arange(n), vocab_size=n, val_fraction=val_fraction)


# ------------------------------------------------------------------ text


def test_builtin_corpus_is_english_prose():
    text = builtin_corpus()
    assert len(text) > 100_000
    words = text.split()
    assert len(words) > 20_000
    for common in ("the", "of", "is", "and", "function", "object"):
        assert words.count(common) > 50, common
    assert sum(c.isascii() for c in text) / len(text) > 0.99
    assert "\n\n\n" not in text and " \n" not in text  # whitespace normalised
    assert builtin_corpus() == text


def test_read_text_file_normalises_newlines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffline one\r\nline two é\r\n".encode())
    assert read_text(path) == "line one\nline two é\n"


def test_read_text_folder_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("B")
    (tmp_path / "a.txt").write_text("A")
    (tmp_path / "sub" / "c.txt").write_text("C")
    (tmp_path / "0.txt").write_text("")  # empty files add nothing
    (tmp_path / "notes.md").write_text("not a .txt file")
    assert read_text(tmp_path) == "A\n\nB\n\nC"


def test_read_text_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_text(missing)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        read_text(tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_text(" \n\t\n")
    with pytest.raises(ValueError, match="is empty"):
        read_text(tmp_path / "blank.txt")
    folder = tmp_path / "no_text"
    folder.mkdir()
    with pytest.raises(ValueError, match="no_text is empty"):
        read_text(folder)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8"):
        read_text(tmp_path / "latin1.txt")


# ------------------------------------------------------------------ encoding and cache


def test_tokens_are_the_encoding_of_the_text(tok, corpus, tmp_path, monkeypatch):
    # Small pieces and chunks, so the text is cut many times: the ids must not change.
    monkeypatch.setattr(data, "_READ_CHARS", 999)
    monkeypatch.setattr(data, "_CHUNK_CHARS", 200)
    monkeypatch.setattr(data, "_CHUNKS_PER_BATCH", 3)
    ds = TokenDataset(corpus, tok, cache_dir=tmp_path)
    expected = tok.encode(corpus, add_special_tokens=False)
    np.testing.assert_array_equal(ds.tokens, expected)
    assert len(ds) == len(expected) and ds.vocab_size == tok.vocab_size


def test_cache_is_written_and_reused(tok, corpus, tmp_path, count_encodes):
    first = TokenDataset(corpus, tok, cache_dir=tmp_path)
    assert count_encodes and not first.from_cache
    assert first.cache_path.parent == tmp_path and first.cache_path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [first.cache_path.name]  # no temp files left
    on_disk = np.load(first.cache_path, allow_pickle=False)
    assert on_disk.dtype == np.uint16
    np.testing.assert_array_equal(on_disk, first.tokens)
    mtime = os.stat(first.cache_path).st_mtime_ns

    count_encodes.clear()
    second = TokenDataset(corpus, tok, cache_dir=tmp_path)
    assert count_encodes == [] and second.from_cache
    assert second.cache_path == first.cache_path
    assert os.stat(second.cache_path).st_mtime_ns == mtime
    assert isinstance(np.load(second.cache_path, mmap_mode="r"), np.memmap)
    np.testing.assert_array_equal(second.tokens, first.tokens)


def test_cache_key_depends_on_text_and_tokenizer(tok, corpus, tmp_path):
    base = TokenDataset(corpus[:5000], tok, cache_dir=tmp_path).cache_path
    other_text = TokenDataset(corpus[:5001], tok, cache_dir=tmp_path).cache_path
    other_tok = Tokenizer.train_bpe(corpus, vocab_size=400)
    other_tokenizer = TokenDataset(corpus[:5000], other_tok, cache_dir=tmp_path).cache_path
    assert len({base, other_text, other_tokenizer}) == 3
    reloaded = Tokenizer.load(tok.save(tmp_path / "tok.json"))
    assert TokenDataset(corpus[:5000], reloaded, cache_dir=tmp_path).cache_path == base


def test_corrupt_cache_is_rebuilt(tok, corpus, tmp_path, count_encodes):
    path = TokenDataset(corpus[:5000], tok, cache_dir=tmp_path).cache_path
    expected = np.load(path)
    path.write_bytes(b"not an npy file")
    count_encodes.clear()
    ds = TokenDataset(corpus[:5000], tok, cache_dir=tmp_path)
    assert count_encodes and not ds.from_cache
    np.testing.assert_array_equal(ds.tokens, expected)


def test_interrupted_encoding_leaves_no_files(tok, corpus, tmp_path, monkeypatch):
    calls = []

    def fail_on_second_call(self, texts, add_special_tokens=True):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return [self.encode(t, add_special_tokens) for t in texts]

    monkeypatch.setattr(data, "_CHUNK_CHARS", 500)
    monkeypatch.setattr(data, "_CHUNKS_PER_BATCH", 2)
    monkeypatch.setattr(Tokenizer, "encode_batch", fail_on_second_call)
    with pytest.raises(KeyboardInterrupt):
        TokenDataset(corpus, tok, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither a temp file nor a partial cache


def test_from_path_matches_text_and_shares_the_cache(tok, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_READ_CHARS", 777)  # files read in many pieces
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "one.txt").write_text(corpus[:20_000])
    (folder / "two.txt").write_text(corpus[20_000:30_000])
    from_text = TokenDataset(read_text(folder), tok, cache_dir=tmp_path / "cache")
    from_path = TokenDataset.from_path(folder, tok, cache_dir=tmp_path / "cache")
    assert from_path.from_cache and from_path.cache_path == from_text.cache_path
    np.testing.assert_array_equal(from_path.tokens, from_text.tokens)
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        TokenDataset.from_path(tmp_path / "nothing_here", tok, cache_dir=tmp_path)
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="blank.txt is empty"):
        TokenDataset.from_path(tmp_path / "blank.txt", tok, cache_dir=tmp_path)


def test_token_dtype():
    assert token_dtype(500) == np.uint16
    assert token_dtype(65_536) == np.uint16  # ids 0..65535
    assert token_dtype(65_537) == np.uint32
    assert token_dtype(200_000) == np.uint32


def test_large_vocabulary_is_cached_as_uint32(tmp_path):
    text = "".join(chr(c) for c in range(0x20000, 0x20000 + 66_000)) + " ascii"
    chars = Tokenizer.char_level(text)
    assert chars.vocab_size > 65_536
    ds = TokenDataset(text, chars, cache_dir=tmp_path)
    assert np.load(ds.cache_path).dtype == np.uint32
    assert int(ds.tokens.max()) >= 65_536
    assert chars.decode(ds.tokens[:100]) == text[:100]


def test_dataset_errors(tok, tmp_path):
    with pytest.raises(TypeError, match="text must be a str"):
        TokenDataset(["a list"], tok, cache_dir=tmp_path)
    with pytest.raises(TypeError, match="Tokenizer"):
        TokenDataset("text", tok.backend, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="text is empty"):
        TokenDataset("  \n", tok, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="val_fraction"):
        TokenDataset("some text", tok, cache_dir=tmp_path, val_fraction=1.0)
    with pytest.raises(ValueError, match="in 0..9"):
        TokenDataset.from_ids([3, 10], vocab_size=10)
    with pytest.raises(TypeError, match="integers"):
        TokenDataset.from_ids(np.array([0.5, 1.0]))


# ------------------------------------------------------------------ splits and batches


@pytest.mark.parametrize("n, fraction", [(1000, 0.1), (1001, 0.25), (37, 0.0), (10, 0.5)])
def test_split_sizes(n, fraction):
    ds = arange_dataset(n, fraction)
    n_val = round(n * fraction)
    assert len(ds.val) == n_val and len(ds.train) == n - n_val
    np.testing.assert_array_equal(np.concatenate([ds.train, ds.val]), np.arange(n))
    assert ds.split_tokens("val") is ds.val
    with pytest.raises(ValueError, match="split must be one of"):
        ds.split_tokens("test")


def test_batch_shapes_and_shift(rng):
    ds = arange_dataset(1000)
    x, y = ds.get_batch("train", batch_size=6, seq_len=17, rng=rng)
    assert x.shape == y.shape == (6, 17)
    assert x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)  # token i+1 follows token i
    np.testing.assert_array_equal(x, x[:, :1] + np.arange(17))  # contiguous windows


def test_batches_of_real_text(tok, corpus, tmp_path, rng):
    ds = TokenDataset(corpus, tok, cache_dir=tmp_path)
    x, y = ds.get_batch("val", batch_size=4, seq_len=32, rng=rng)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    stretches = np.lib.stride_tricks.sliding_window_view(ds.val, 33)  # (n_val - 32, 33)
    for row_x, row_y in zip(x, y):
        window = np.append(row_x, row_y[-1])  # (33,)
        assert np.all(stretches == window, axis=1).any()  # a stretch of the validation ids


def test_same_seed_same_batch_other_seed_other_batch():
    ds = arange_dataset(5000)
    a = ds.get_batch("train", 8, 16, np.random.default_rng(123))
    b = ds.get_batch("train", 8, 16, np.random.default_rng(123))
    c = ds.get_batch("train", 8, 16, np.random.default_rng(124))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_windows_stay_inside_their_split(rng):
    ds = arange_dataset(300, val_fraction=0.1)  # train 0..269, val 270..299
    seq_len = 10
    x, y = ds.get_batch("val", batch_size=2000, seq_len=seq_len, rng=rng)
    assert x.min() == 270 and y.max() == 299  # first and last val tokens both reachable
    assert set(x[:, 0].tolist()) == set(range(270, 300 - seq_len))  # every start drawn
    x, y = ds.get_batch("train", batch_size=2000, seq_len=seq_len, rng=rng)
    assert x.min() == 0 and y.max() == 269


def test_sample_windows_is_get_batch_unshifted():
    ds = arange_dataset(500)
    windows = ds.sample_windows("train", 5, 13, np.random.default_rng(7))
    x, y = ds.get_batch("train", 5, 12, np.random.default_rng(7))
    assert windows.shape == (5, 13) and windows.dtype == np.int64
    np.testing.assert_array_equal(windows[:, :-1], x)
    np.testing.assert_array_equal(windows[:, 1:], y)


def test_too_short_split_says_what_it_has_and_needs(rng):
    ds = arange_dataset(100, val_fraction=0.1)  # val has 10 tokens
    with pytest.raises(ValueError, match=r"'val' split has 10 tokens.*needs at least 11"):
        ds.get_batch("val", 2, 10, rng)
    ds.get_batch("val", 2, 9, rng)  # 10 tokens are enough for seq_len 9
    with pytest.raises(ValueError, match="has 10 tokens"):
        list(ds.iter_batches("val", 2, 10))
    with pytest.raises(ValueError, match="'val' split has 0 tokens"):
        arange_dataset(100, val_fraction=0.0).get_batch("val", 1, 4, rng)
    with pytest.raises(TypeError, match="Generator"):
        ds.get_batch("train", 2, 4, rng=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        ds.get_batch("train", 0, 4, rng)


@given(n=st.integers(2, 400), seq_len=st.integers(1, 40), batch_size=st.integers(1, 9))
def test_iter_batches_covers_the_split_once(n, seq_len, batch_size):
    ds = arange_dataset(n, val_fraction=0.0)
    n_windows = (n - 1) // seq_len
    if n_windows == 0:
        with pytest.raises(ValueError, match="fewer than"):
            list(ds.iter_batches("train", batch_size, seq_len))
        return
    batches = list(ds.iter_batches("train", batch_size, seq_len))
    assert [len(x) for x, _ in batches[:-1]] == [batch_size] * (len(batches) - 1)
    xs = np.concatenate([x for x, _ in batches])  # (W, T)
    ys = np.concatenate([y for _, y in batches])
    assert xs.shape == ys.shape == (n_windows, seq_len) and xs.dtype == np.int64
    # Inputs tile the split back to back (no overlap, no gap), targets one ahead.
    np.testing.assert_array_equal(xs.ravel(), np.arange(n_windows * seq_len))
    np.testing.assert_array_equal(ys.ravel(), np.arange(1, n_windows * seq_len + 1))
    assert n - 1 - n_windows * seq_len < seq_len  # what is left out cannot fill a window


def test_iter_windows_share_one_token():
    ds = arange_dataset(21, val_fraction=0.0)
    windows = np.concatenate(list(ds.iter_windows("train", 2, 5)))
    np.testing.assert_array_equal(windows[:, 0], [0, 4, 8, 12, 16])  # the last ends at id 20
    assert len(np.concatenate(list(arange_dataset(20, 0.0).iter_windows("train", 2, 5)))) == 4
    np.testing.assert_array_equal(windows[:-1, -1], windows[1:, 0])
    with pytest.raises(ValueError, match="length must be >= 2"):
        next(ds.iter_windows("train", 2, 1))


def test_unigram_baseline_matches_a_naive_computation():
    ids = [0, 1, 1, 2, 2, 2, 3, 0, 1, 4, 2, 2, 5, 1, 0, 3, 3, 1, 2, 7]
    ds = TokenDataset.from_ids(ids, vocab_size=9, val_fraction=0.25)  # train 15, val 5
    train, val = ids[:15], ids[15:]
    expected = {}
    for name, split in (("train", train), ("val", val)):
        total = 0.0
        for token in split:
            p = (train.count(token) + 1) / (len(train) + 9)
            total -= math.log(p)
        expected[name] = total / len(split)
    assert ds.unigram_baseline_loss("val") == pytest.approx(expected["val"], rel=1e-12)
    assert ds.unigram_baseline_loss("train") == pytest.approx(expected["train"], rel=1e-12)
    with pytest.raises(ValueError, match="'val' split is empty"):
        TokenDataset.from_ids(ids, val_fraction=0.0).unigram_baseline_loss("val")


def test_unigram_baseline_on_text_is_below_uniform(tok, corpus, tmp_path):
    ds = TokenDataset(corpus, tok, cache_dir=tmp_path)
    loss = ds.unigram_baseline_loss()
    assert 2.0 < loss < math.log(tok.vocab_size)
