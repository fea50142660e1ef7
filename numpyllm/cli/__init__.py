"""The ``numpyllm`` command: train, fine-tune, evaluate, generate and chat from a terminal.

    numpyllm train                                   # a small GPT on the built-in corpus
    numpyllm generate runs/gpt --prompt "The list"
    numpyllm chat runs/gpt

Each subcommand lives in its own module (``train``, ``finetune``, ``evaluate``,
``generate``, ``chat``) with an ``add_parser(subparsers)`` and a ``run(args) -> int``;
``common`` holds what they share. :func:`main` turns the errors a user can cause
(a missing file, a corrupted checkpoint, a bad flag value) into one line on stderr,
``numpyllm: error: ...``, with exit status 2 for usage errors and 1 for the rest;
``NUMPYLLM_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Sequence

from numpyllm.cli import attention, chat, common, evaluate, finetune, generate, train
from numpyllm.distributed import end_job, launched_rank, launched_world_size

__all__ = ["main", "build_parser"]

SUBCOMMANDS = (train, finetune, evaluate, generate, chat, attention)

DESCRIPTION = """\
numpyllm: the maths of a large language model written out in NumPy, from a terminal.

  numpyllm train                              train a small GPT on the built-in corpus (~5 min)
  numpyllm generate runs/gpt --prompt "The"   continue a prompt
  numpyllm chat runs/gpt                      talk with it
  numpyllm eval runs/gpt                      loss and perplexity on held-out text
  numpyllm finetune runs/gpt --data my.txt    keep training it on your own text
  numpyllm generate gpt2 --prompt "The"       GPT-2 from your Hugging Face cache (no download)

Run `numpyllm COMMAND --help` for each command's options.
Set NUMPYLLM_DEBUG=1 to see full tracebacks instead of one-line errors.
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("numpyllm")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> common.Parser:
    parser = common.Parser(
        prog="numpyllm", description=DESCRIPTION, formatter_class=common.HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"numpyllm {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def _is_user_error(exc: BaseException) -> bool:
    """Errors that bad input causes, reported in one line (anything else is a bug: traceback)."""
    if isinstance(exc, (ValueError, TypeError, OSError)):
        return True
    if isinstance(exc, MemoryError) and exc.args:  # the memory check's refusal, a sentence
        return True
    trainer = sys.modules.get("numpyllm.trainer")  # imported only if training ran
    return trainer is not None and isinstance(exc, trainer.TrainingError)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        message = f"{exc.strerror}: {exc.filename}"
    else:
        message = str(exc) or type(exc).__name__
    return " ".join(message.split())


def _show_note(message: Warning | str, *args: object, **kwargs: object) -> None:
    """A warning as the command shows it: one line on stderr, ``numpyllm: note: ...``."""
    print(f"numpyllm: note: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error already printed
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    if args.command is None:
        parser.print_help()
        return 2
    if launched_world_size() > 1 and launched_rank() != 0:
        # under mpiexec every rank runs the same command: rank 0 alone speaks (a rank that
        # fails alone says so on the real stderr as it ends the job: numpyllm.distributed)
        sys.stdout = sys.stderr = open(os.devnull, "w")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_note  # restored on leaving the block
            return int(args.run(args) or 0)
    except KeyboardInterrupt:
        if common.debug_enabled():
            raise
        print("\nnumpyllm: interrupted", file=sys.stderr)
        # Ctrl-C outside the training loop (whose ranks agree on a step to stop at): under
        # mpiexec every rank has it, but each at its own moment, so the job ends as a whole
        end_job("interrupted", 130)
        return 130
    except common.UsageError as exc:
        if common.debug_enabled():
            raise
        print(f"numpyllm: error: {_one_line(exc)}", file=sys.stderr)
        end_job(f"error: {_one_line(exc)}", 2)  # under mpiexec: the others may wait for us
        return 2
    except Exception as exc:
        if common.debug_enabled() or not _is_user_error(exc):
            # a rank that ends alone leaves the others waiting in their next collective for
            # ever: under mpiexec the traceback goes to the real stderr and the job ends
            if launched_world_size() > 1:
                traceback.print_exc(file=sys.__stderr__ or sys.stderr)
            end_job(f"{type(exc).__name__}: {_one_line(exc)}", 1)
            raise
        print(f"numpyllm: error: {_one_line(exc)}", file=sys.stderr)
        end_job(f"error: {_one_line(exc)}", 1)
        return 1
