"""Data parallelism across processes: one model replica per MPI rank, gradients averaged.

Every rank holds the whole model and the same parameters. A step draws the same global
batch of N * b rows on every rank (same seed, same Generator), and rank r keeps rows
[r b, (r + 1) b). The loss is a mean over the batch's n scored items (tokens, or rows),
and rank r holds n_r of them, so

    L = sum_r (n_r / n) L_r,      dL/dtheta = sum_r (n_r / n) dL_r/dtheta,

which is what one process computes on the whole batch. Each rank scales its gradient by
n_r / n and one ``Allreduce`` (sum) per flat gradient buffer of the optimizer adds them up;
every rank then takes the same optimizer step and stays identical to the others (checked
by a checksum now and then, since a silent divergence would waste a whole run).

``mpi4py`` is imported only here and only when a run is distributed: a single process
uses :class:`SingleProcess`, whose reductions do nothing.

The cost of a step's Allreduce: a ring all-reduce sends and receives 2 (N - 1) / N of the
gradient's bytes per rank, whatever N (see docs/distributed.md for the projection).
"""

from __future__ import annotations

import os
import socket
import sys
import time
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Environment variables by which MPI launchers tell a process the job's size and its rank
#: (MPICH's Hydra and Intel MPI: PMI_*; Open MPI: OMPI_COMM_WORLD_*).
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK")


def launched_world_size() -> int:
    """The number of processes the launcher started (1 outside ``mpiexec``)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 outside ``mpiexec``), read without MPI,
    so that a command can keep its output to rank 0 before anything is imported."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 0


def end_job(message: str, code: int) -> None:
    """Under ``mpiexec`` with more than one process: print ``message`` naming this rank and
    end every rank of the job with exit status ``code``. Otherwise nothing.

    For a rank that stops on its own outside the training loop (a Ctrl-C while the command
    starts up, say): a rank that simply exits leaves the others waiting for it for ever,
    in their next collective or in ``MPI_Init`` itself. So MPI is started here if it is
    not yet (joining the ranks that wait in ``MPI_Init``), then aborted.
    """
    if launched_world_size() <= 1:
        return
    try:
        from mpi4py import MPI
    except ImportError:  # no MPI in this venv: nothing can be waiting in it
        return

    _say_and_abort(MPI.COMM_WORLD, message, code)


# How long a rank that ends the job waits between printing why and aborting. mpiexec's proxy
# relays each rank's stderr; the abort kills the proxy too, and a message still in its pipe
# is lost (seen under load: the job ended with the right status and an empty stderr).
ABORT_GRACE_SECONDS = 0.5


def _say_and_abort(comm: Any, message: str, code: int) -> None:
    """Print ``message`` naming this rank on the real stderr (the command quiets other
    ranks' ``sys.stderr``), give the launcher time to relay it, then end every rank."""
    stderr = sys.__stderr__ or sys.stderr
    print(f"numpyllm: rank {comm.Get_rank()} of {comm.Get_size()}: {message}", file=stderr,
          flush=True)  # fmt: skip
    time.sleep(ABORT_GRACE_SECONDS)
    comm.Abort(code)


class DivergedError(RuntimeError):
    """The ranks' parameters differ: the run can no longer stand for one process's."""


class SingleProcess:
    """The world of a run that is not distributed: rank 0 of 1, every reduction a no-op."""

    rank = 0
    size = 1
    distributed = False

    def allreduce_sum(self, buffer: np.ndarray) -> None:
        """Sum ``buffer`` over the ranks, in place (nothing to add here)."""

    def sum_values(self, values: Sequence[float]) -> np.ndarray:
        """Each value summed over the ranks, as float64."""
        return np.asarray(values, dtype=np.float64)

    def check_identical(self, buffers: Sequence[np.ndarray], step: int) -> None:
        """Raise DivergedError if the ranks' ``buffers`` differ (one rank: they cannot)."""

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        return [value]

    def barrier(self) -> None:
        """Wait for every rank."""

    def abort(self, message: str, code: int = 1) -> None:
        """Stop the whole job (here: only this process) after printing ``message``."""
        raise SystemExit(code)


class MPIWorld(SingleProcess):
    """The ranks of ``MPI.COMM_WORLD``."""

    distributed = True

    def __init__(self) -> None:
        try:
            from mpi4py import MPI
        except ImportError as exc:  # the extra is not installed
            raise ImportError(
                "a distributed run needs mpi4py and an MPI: pip install 'numpyllm[mpi]'"
            ) from exc
        self._mpi: Any = MPI
        self.comm: Any = MPI.COMM_WORLD
        self.rank = int(self.comm.Get_rank())
        self.size = int(self.comm.Get_size())
        # (host, pid) of every rank: the launcher names a rank that dies by its pid and host
        self.processes: list[tuple[str, int]] = list(
            self.comm.allgather((socket.gethostname(), os.getpid()))
        )
        self.bytes_reduced = 0  # gradient bytes handed to Allreduce (for the benchmarks)
        self.seconds_reducing = 0.0  # time spent in those Allreduce calls

    def allreduce_sum(self, buffer: np.ndarray) -> None:
        if not buffer.flags.c_contiguous:
            raise ValueError("allreduce_sum needs a contiguous buffer")
        start = time.perf_counter()
        self.comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM)
        self.seconds_reducing += time.perf_counter() - start
        self.bytes_reduced += buffer.nbytes

    def sum_values(self, values: Sequence[float]) -> np.ndarray:
        summed = np.asarray(values, dtype=np.float64).copy()
        self.comm.Allreduce(self._mpi.IN_PLACE, summed, op=self._mpi.SUM)
        return summed

    def check_identical(self, buffers: Sequence[np.ndarray], step: int) -> None:
        """A CRC of every parameter byte, gathered from every rank and compared: identical
        ranks take identical steps, so any difference is a bug or a hardware fault."""
        checksum = 0
        for buffer in buffers:
            checksum = zlib.crc32(np.ascontiguousarray(buffer).tobytes(), checksum)
        sums = self.comm.allgather(checksum)
        if len(set(sums)) > 1:
            differing = [r for r, s in enumerate(sums) if s != sums[0]]
            raise DivergedError(
                f"at step {step} the parameters of rank(s) {differing} differ from rank 0's "
                "(checksums of every parameter byte); the ranks no longer train one model"
            )

    def gather(self, value: Any) -> list[Any]:
        return list(self.comm.allgather(value))

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, message: str, code: int = 1) -> None:
        """Print ``message`` naming this rank, then end every rank of the job: an error on
        one rank must not leave the others waiting in a collective for ever."""
        _say_and_abort(self.comm, message, code)


World = SingleProcess  # the type every world has (MPIWorld is a SingleProcess too)


def world_for(backend: str | None) -> SingleProcess:
    """The world a run trains in: ``backend`` "mpi" (or None under ``mpiexec`` with more
    than one process) gives the MPI ranks; otherwise a single process."""
    if backend not in (None, "mpi", "none"):
        raise ValueError(f"ddp_backend must be 'mpi', 'none' or None, got {backend!r}")
    if backend == "mpi" or (backend is None and launched_world_size() > 1):
        return MPIWorld()
    return SingleProcess()
