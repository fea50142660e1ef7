"""Corpora larger than the memory: ``--data`` is read piece by piece by the tokenizer's
training and by the token cache, never whole, so the memory of preparing a corpus does not
grow with its size; a file several times larger than the memory left to the process trains
under an OS limit; and the stream gives exactly the tokenizer and ids of the whole text."""

import argparse
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np

from numpyllm import data
from numpyllm.cli import common

ROOT = Path(__file__).resolve().parents[1]


def write_corpus(path, n_chars: int, seed: int = 0) -> None:
    """Lines of words drawn from a fixed list, ``n_chars`` characters in all."""
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    words = ["".join(rng.choice(letters, size=rng.integers(2, 9))) for _ in range(300)]
    lines, total = [], 0
    while total < n_chars:
        line = " ".join(rng.choice(words, size=12)) + ".\n"
        lines.append(line)
        total += len(line)
    path.write_text("".join(lines), encoding="utf-8")


def prepare(path, cache_dir) -> tuple:
    """What ``numpyllm train --data path`` does before building the model."""
    args = argparse.Namespace(cache_dir=str(cache_dir), val_fraction=0.05)
    corpus, _ = common.load_corpus(str(path))
    tokenizer, _ = common.make_tokenizer("bpe", corpus, 300)
    dataset = common.token_dataset(corpus, tokenizer, args)
    dataset.unigram_baseline_loss("val")
    return tokenizer, dataset


def peak_bytes(path, cache_dir) -> int:
    tracemalloc.start()
    try:
        prepare(path, cache_dir)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_preparing_a_corpus_takes_memory_that_does_not_grow_with_its_size(tmp_path, monkeypatch):
    # Small pieces and chunks, so that small files are many of them: the tokenizer's
    # training reads up to 256 chunks ahead, the encoding 8 chunks at a time.
    monkeypatch.setattr(data, "_READ_CHARS", 1 << 14)
    monkeypatch.setattr(data, "_CHUNK_CHARS", 1 << 10)
    monkeypatch.setattr(data, "_COPY_BYTES", 1 << 14)
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    write_corpus(small, 400_000)
    write_corpus(large, 1_200_000, seed=1)
    peaks = [peak_bytes(p, tmp_path / p.stem) for p in (small, large)]
    # the whole text of the large file alone would add 800 kB (and a joined copy as much)
    assert peaks[1] - peaks[0] < 300_000, peaks


def test_the_stream_gives_the_tokenizer_and_ids_of_the_whole_text(tmp_path, monkeypatch):
    from numpyllm.data import TokenDataset, read_text
    from numpyllm.tokenizer import Tokenizer

    monkeypatch.setattr(data, "_READ_CHARS", 1 << 14)
    folder = tmp_path / "texts"
    folder.mkdir()
    write_corpus(folder / "a.txt", 60_000)
    write_corpus(folder / "b.txt", 40_000, seed=2)
    streamed, dataset = prepare(folder, tmp_path / "cache")
    whole = Tokenizer.train_bpe(read_text(folder), vocab_size=300)
    assert streamed.to_json() == whole.to_json()
    ids = TokenDataset(read_text(folder), whole, cache_dir=tmp_path / "cache2").tokens
    np.testing.assert_array_equal(dataset.tokens, ids)
    assert dataset.n_chars == len(read_text(folder))


# Run in a fresh interpreter: warm up with a small file (imports, thread pools, the model's
# step and evaluation: everything that does not grow with the text), then cap the data
# segment (RLIMIT_DATA: heap and private writable mappings; read-only file mappings such as
# the memory-mapped token cache do not count) a few MiB above what the process holds, and
# train on a file several times larger than that room. RLIMIT_AS would not do: it counts
# address space merely reserved (each thread's stack, malloc's arenas), not memory used.
UNDER_A_LIMIT = """
import json, os, resource, sys
from functools import partial
import numpy as np
from numpyllm import data
from numpyllm.nn.parallel import available_cores, run_parts
from numpyllm.cli import main

data._READ_CHARS, data._CHUNK_CHARS, data._COPY_BYTES = 1 << 16, 1 << 12, 1 << 16
small, large, out, cache, room = sys.argv[1:]

def data_bytes():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData:"))

def train(path, val_tokens):
    return main([
        "train", "--data", path, "--preset", "tiny", "--tokenizer", "char", "--max-steps", "2",
        "--val-fraction", str(val_tokens / os.path.getsize(path)), "--disable-tqdm",
        "--cache-dir", cache, "--output-dir", out, "--overwrite-output-dir",
    ])

warm = train(small, 2_400)  # evaluation: more (and fuller) batches than below
# BLAS maps a work buffer for each thread that calls it at the same time, when it first
# needs one (under load, calls overlap that did not before): map them all now, a matmul
# large enough to use every BLAS thread, run on every thread training calls BLAS from.
square = np.ones((1024, 1024), dtype=np.float32)
for _ in range(3):
    run_parts([partial(np.matmul, square, square)] * available_cores())
limit = data_bytes() + int(room)
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
status = train(large, 300)  # ASCII: one character a byte
try:
    whole = len(open(large, encoding="utf-8").read())
except MemoryError:
    whole = None
print(json.dumps({"warm": warm, "status": status, "read_whole": whole}))
"""


def test_training_on_a_file_several_times_larger_than_the_memory_left(tmp_path):
    room = 4 << 20  # what the process may still allocate once warmed up
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    write_corpus(small, 1_200_000)
    piece = small.read_bytes()
    with open(large, "wb") as f:
        for _ in range(4 * room // len(piece) + 1):  # four times the room, quickly
            f.write(piece)
    assert large.stat().st_size > 4 * room
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [small, large, tmp_path / "out", tmp_path / "cache", room]
    done = subprocess.run(
        [sys.executable, "-c", UNDER_A_LIMIT, *map(str, argv)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["warm"] == 0
    assert result["status"] == 0, done.stderr[-3000:]  # streamed, encoded, trained, scored
    assert result["read_whole"] is None  # the limit binds: the text whole does not fit
    cached = [np.load(p, mmap_mode="r").size for p in (tmp_path / "cache").glob("*.npy")]
    assert large.stat().st_size in cached  # every character of the large file became an id
