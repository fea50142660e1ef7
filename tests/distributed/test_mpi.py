"""Data-parallel training over MPI: two ranks equal one process with the doubled batch.

Each test launches ``mpiexec -n 2`` on this machine (loopback only) with a tiny GPT
(``run_training.py``). They need mpi4py and an MPI (the ``mpi`` extra, which ``.ci/run``
installs); without them they are skipped with that reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from numpyllm.data import builtin_corpus
from numpyllm.distributed import SingleProcess, launched_world_size, world_for
from tests.distributed import run_training

pytest.importorskip("mpi4py", reason="the distributed tests need the mpi extra (mpi4py)")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
if MPIEXEC is None:
    pytest.skip("the distributed tests need mpiexec (pip install mpich)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(run_training.__file__)
TIMEOUT = 60  # seconds: a hung job fails the test instead of hanging the suite


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


@contextlib.contextmanager
def job(command: list[str], env: dict, **popen: object):
    """An MPI job started in a session of its own. Whatever happens, none of its processes
    outlives the block: mpiexec puts its proxy and every rank in sessions of their own,
    out of reach of a signal to its group, so each is ended by its id."""
    process = subprocess.Popen(command, env=env, start_new_session=True, **popen)
    try:
        yield process
    finally:
        for pid in [*descendants(process.pid), process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()


def run_job(command: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run an MPI job to its end (at most TIMEOUT seconds)."""
    with job(command, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def mpirun(out: Path, *args: str, ranks: int = 2, check: bool = True):
    command = [MPIEXEC, "-n", str(ranks), sys.executable, str(SCRIPT), str(out), *args]
    done = run_job(command, ENV)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def params(folder: Path) -> dict[str, np.ndarray]:
    return load_file(str(folder / "model.safetensors"))


def losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line]


def without_key_bias(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every parameter but the attention key bias. Its exact gradient is zero (a constant
    added to a whole softmax row changes nothing), so what it gets is rounding noise, which
    Adam turns into full-size steps: it differs between any two summation orders, and
    nothing else depends on it (see docs/attention.md)."""
    out = dict(state)
    for name, value in state.items():
        if name.endswith("attn.c_attn.bias"):
            d = value.shape[0] // 3
            out[name] = np.concatenate([value[:d], value[2 * d :]])  # q and v parts
    return out


def assert_close(a: dict, b: dict, rtol: float) -> None:
    """Each tensor within ``rtol`` of the other relative to its norm, ||a - b|| <= rtol ||b||
    (an element that is nearly 0 carries float32's rounding at the tensor's scale)."""
    a, b = without_key_bias(a), without_key_bias(b)
    assert a.keys() == b.keys()
    for name in a:
        gap = np.linalg.norm(a[name] - b[name]) / np.linalg.norm(b[name])
        assert gap <= rtol, f"{name}: relative gap {gap:.2e} > {rtol:.0e}"


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_two_ranks_equal_one_process_with_the_doubled_batch(tmp_path, dtype, rtol):
    mpirun(tmp_path / "ranks", "--dtype", dtype, "--batch", "4")
    run_training.train(tmp_path / "one", dtype=dtype, batch=8)
    two, one = params(tmp_path / "ranks/checkpoint-3"), params(tmp_path / "one/checkpoint-3")
    assert_close(two, one, rtol)
    np.testing.assert_allclose(losses(tmp_path / "ranks"), losses(tmp_path / "one"), rtol=rtol)
    # evaluation is reduced over the ranks too: the same batches, split between them
    ranked = json.loads((tmp_path / "ranks/metrics.jsonl").read_text().splitlines()[-1])
    single = json.loads((tmp_path / "one/metrics.jsonl").read_text().splitlines()[-1])
    assert ranked["eval_loss"] == pytest.approx(single["eval_loss"], rel=rtol)
    # and it is not the same as one process with the per-rank batch
    run_training.train(tmp_path / "half", dtype=dtype, batch=4)
    assert not np.allclose(losses(tmp_path / "half")[1:], losses(tmp_path / "one")[1:])


def test_only_rank_zero_writes(tmp_path):
    done = mpirun(tmp_path / "run", "--steps", "2", "--save-steps", "1")
    assert "rank 1 writes: 0 []" in done.stdout, done.stdout
    assert "rank 0 done at step 2" in done.stdout
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == [
        "checkpoint-1",
        "checkpoint-2",
    ]


def test_the_write_watch_sees_writes(tmp_path):
    """The check above would pass if the watch saw nothing: it does see a write."""
    watch = run_training._WriteWatch(tmp_path)
    (tmp_path / "a.txt").write_text("x")
    assert watch.writes


def test_resume_with_the_same_ranks_is_exact_and_with_one_rank_goes_on(tmp_path):
    mpirun(tmp_path / "straight", "--steps", "4", "--save-steps", "2", "--dropout", "0.1")
    # a run stopped after step 2: its checkpoint-2 alone, taken on to step 4 by two ranks
    shutil.copytree(tmp_path / "straight/checkpoint-2", tmp_path / "stopped/checkpoint-2")
    mpirun(tmp_path / "stopped", "--steps", "4", "--save-steps", "2", "--dropout", "0.1",
           "--resume")  # fmt: skip
    straight = params(tmp_path / "straight/checkpoint-4")
    resumed = params(tmp_path / "stopped/checkpoint-4")
    for name in straight:  # bit for bit: same ranks, same batches, same dropout streams
        assert np.array_equal(straight[name], resumed[name]), name
    state = json.loads((tmp_path / "stopped/checkpoint-4/trainer_state.json").read_text())
    assert len(state["rng"]["model_by_rank"]) == 2  # each rank's own dropout streams
    # one process takes the 2-rank checkpoint on: the global batch is now 4 rows
    shutil.copytree(tmp_path / "straight/checkpoint-2", tmp_path / "single/checkpoint-2")
    metrics = run_training.train(tmp_path / "single", steps=4, dropout=0.1, resume=True)
    assert metrics["global_step"] == 4 and np.isfinite(metrics["train_loss"])
    after = params(tmp_path / "single/checkpoint-4")
    before = params(tmp_path / "straight/checkpoint-2")
    assert any(not np.array_equal(after[name], before[name]) for name in after)


def test_a_rank_that_raises_ends_the_job_with_its_message(tmp_path):
    done = mpirun(tmp_path / "run", "--steps", "4", "--save-steps", "1", "--fail-rank", "1",
                  check=False)  # fmt: skip
    assert done.returncode != 0
    assert "rank 1 of 2: RuntimeError: injected failure at step 2" in done.stderr, done.stderr
    # the last complete checkpoint is there and loads
    from numpyllm.checkpoint import load_model

    assert load_model(tmp_path / "run/checkpoint-1") is not None


def test_ranks_whose_weights_differ_stop_the_job_naming_them(tmp_path):
    done = mpirun(tmp_path / "run", "--steps", "4", "--nudge-rank", "1", check=False)
    assert done.returncode != 0
    assert "DivergedError: at step 2 the parameters of rank(s) [1] differ" in done.stderr


def test_a_killed_rank_ends_the_job(tmp_path):
    done = mpirun(tmp_path / "run", "--steps", "4", "--kill-rank", "1", check=False)
    assert done.returncode != 0  # and within TIMEOUT: subprocess.run raises otherwise


def test_ctrl_c_stops_every_rank_at_one_step_and_saves_it(tmp_path):
    """Ctrl-C in a terminal sends SIGINT to the foreground process group: mpiexec (its
    proxy and the ranks are in sessions of their own), which forwards it to every rank."""
    out = tmp_path / "run"
    command = [MPIEXEC, "-n", "2", sys.executable, str(SCRIPT), str(out), "--steps", "100000",
               "--batch", "1"]  # fmt: skip
    with job(command, ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        deadline = time.monotonic() + TIMEOUT
        metrics = out / "metrics.jsonl"
        while not metrics.is_file() or not metrics.read_text():  # a step is done: training
            assert time.monotonic() < deadline and process.poll() is None, "never started"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 130, stdout + stderr  # as one process: interrupted
    saved = sorted(out.glob("checkpoint-*"))
    assert len(saved) == 1, stdout + stderr
    step = int(saved[0].name.split("-")[1])
    state = json.loads((saved[0] / "trainer_state.json").read_text())
    assert state["global_step"] == step >= 1
    assert len(state["rng"]["model_by_rank"]) == 2  # both ranks reached the save
    assert f"interrupted at step {step}" in stdout
    from numpyllm.checkpoint import load_model

    assert load_model(saved[0]) is not None


LONE_INTERRUPT = """
import os, sys
from numpyllm import cli
from numpyllm.cli import train
from numpyllm.distributed import world_for

def run(args):
    if os.environ["PMI_RANK"] == "1":
        raise KeyboardInterrupt  # before this rank has even started MPI
    world_for("mpi").barrier()  # while rank 0 waits for it
    return 0

train.run = run
sys.exit(cli.main(["train"]))
"""


def test_a_rank_interrupted_outside_training_ends_the_job():
    done = run_job([MPIEXEC, "-n", "2", sys.executable, "-c", LONE_INTERRUPT], ENV)
    assert done.returncode == 130, done.stdout + done.stderr  # and within TIMEOUT
    assert "numpyllm: rank 1 of 2: interrupted" in done.stderr


LONE_ERROR = """
import sys
from numpyllm import cli
from numpyllm.cli import train
from numpyllm.distributed import world_for

def run(args):
    world = world_for("mpi")
    if world.rank == 0:
        raise {error}  # a rank-0-only step (writing a file, say) fails
    world.barrier()  # while rank 1 waits for rank 0
    return 0

train.run = run
sys.exit(cli.main(["train"]))
"""


@pytest.mark.parametrize(
    "error, code",
    [('OSError("disk full")', 1), ('RuntimeError("a bug")', 1)],
    ids=["user error", "unexpected error"],
)
def test_a_rank_failing_alone_outside_training_ends_the_job(error, code):
    program = LONE_ERROR.format(error=error)
    done = run_job([MPIEXEC, "-n", "2", sys.executable, "-c", program], ENV)
    assert done.returncode == code, done.stdout + done.stderr  # and within TIMEOUT
    assert "numpyllm: rank 0 of 2: " in done.stderr
    assert error.split('"')[1] in done.stderr


def test_a_single_process_has_no_mpi(monkeypatch):
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launched_world_size() == 1
    world = world_for(None)
    assert type(world) is SingleProcess and world.size == 1 and not world.distributed
    assert type(world_for("none")) is SingleProcess
    with pytest.raises(ValueError, match="ddp_backend"):
        world_for("nccl")


def test_the_command_line_trains_over_two_ranks(tmp_path):
    command = [MPIEXEC, "-n", "2", sys.executable, "-m", "numpyllm", "train", "--preset", "tiny",
               "--tokenizer", "char", "--max-steps", "3", "--per-device-train-batch-size", "2",
               "--output-dir", str(tmp_path / "run"), "--disable-tqdm"]  # fmt: skip
    done = run_job(command, ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("ranks       2 MPI processes, 2 rows each of a 4-row batch") == 1
    assert re.search(r"processes   rank 0 pid \d+ on \S+, rank 1 pid \d+ on \S+", done.stdout)
    assert (tmp_path / "run/checkpoint-3/model.safetensors").is_file()


def test_lora_fine_tuning_over_two_ranks_equals_one_process_with_the_doubled_batch(tmp_path):
    from numpyllm import cli

    base, text = tmp_path / "base", tmp_path / "text.txt"
    # Fixed text, not a file of the repository: each lora_B starts at zero, so lora_A's first
    # gradients are tiny and Adam scales them up to whole steps, which makes the float32 gap
    # between the two summation orders depend on the text (2e-8 of A here, 2e-5 on one
    # version of the README)
    text.write_text(builtin_corpus()[:20000], encoding="utf-8")
    assert cli.main(["train", "--preset", "tiny", "--tokenizer", "char", "--max-steps", "1",
                     "--output-dir", str(base), "--disable-tqdm"]) == 0  # fmt: skip
    flags = ["finetune", str(base), "--data", str(text), "--lora-r", "8", "--max-steps", "3",
             "--dropout", "0", "--seq-len", "32", "--learning-rate", "1e-2", "--warmup-steps",
             "0", "--disable-tqdm"]  # fmt: skip
    done = run_job([MPIEXEC, "-n", "2", sys.executable, "-m", "numpyllm", *flags,
                    "--per-device-train-batch-size", "2", "--output-dir", str(tmp_path / "two")],
                   ENV)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert cli.main([*flags, "--per-device-train-batch-size", "4",
                     "--output-dir", str(tmp_path / "one")]) == 0  # fmt: skip
    two = load_file(str(tmp_path / "two/adapter_model.safetensors"))
    one = load_file(str(tmp_path / "one/adapter_model.safetensors"))
    assert_close(two, one, 1e-5)  # float32
    assert all(np.any(one[name] != 0) for name in one)  # every adapter matrix has trained
