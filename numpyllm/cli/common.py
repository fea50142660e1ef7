"""Pieces every subcommand shares: the help formatter, argument groups, flag checks,
checkpoint loading and text generation.

Heavy modules (the model, the trainer) are imported inside functions, so that
``numpyllm --help`` answers at once and works even when they cannot be imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn

#: Model sizes. The context length (seq_len) is also the length of a training row.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "d_model": 64, "seq_len": 64},
    "small": {"n_layer": 4, "n_head": 4, "d_model": 128, "seq_len": 128},
    "medium": {"n_layer": 6, "n_head": 6, "d_model": 384, "seq_len": 256},
}

#: The decoder-only models ``numpyllm train --model`` builds.
MODELS = ("gpt", "llama")

MIN_BPE_VOCAB = 259  # 256 bytes + the 3 default special tokens

#: TrainingArguments fields set by flags of the same name (dashes for underscores).
TRAINING_FIELDS = (
    "output_dir",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "learning_rate",
    "warmup_steps",
    "lr_scheduler_type",
    "weight_decay",
    "max_grad_norm",
    "logging_steps",
    "eval_steps",
    "eval_batches",
    "save_steps",
    "save_total_limit",
    "seed",
    "resume_from_checkpoint",
    "disable_tqdm",
    "gradient_checkpointing",
    "ignore_memory_check",
)


class UsageError(ValueError):
    """A flag value that cannot work (reported like argparse's errors, exit status 2)."""


# ---------------------------------------------------------------------------- help


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends "(default: ...)" to every option's help,
    unless the help already says what the default is or there is no default to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not action.option_strings:
            return text
        if action.default in (None, False, argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``numpyllm: error: ...`` (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"numpyllm: error: {message} (see '{self.prog} --help')\n")


# ---------------------------------------------------------------------- flag types


def _number(kind: type, text: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        name = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def any_int(text: str) -> int:
    return _number(int, text)


def positive_float(text: str) -> float:
    value = _number(float, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def nonnegative_float(text: str) -> float:
    value = _number(float, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def probability(text: str) -> float:
    """A value in (0, 1], as top-p needs."""
    value = _number(float, text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def fraction(text: str) -> float:
    """A value in [0, 1), as dropout and the validation fraction need."""
    value = _number(float, text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


# ---------------------------------------------------------------- argument groups


def add_data_args(parser: argparse.ArgumentParser, data_help: str, required=False) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", metavar="PATH", required=required, help=data_help)
    group.add_argument(
        "--val-fraction",
        metavar="F",
        type=fraction,
        default=0.1,
        help="share of the tokens, taken from the end of the text, held out for validation",
    )
    group.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where encoded token ids are cached (default: $NUMPYLLM_CACHE, else "
        "~/.cache/numpyllm)",
    )


def add_tokenizer_args(parser: argparse.ArgumentParser, vocab_size: int) -> None:
    group = parser.add_argument_group("tokenizer")
    group.add_argument(
        "--tokenizer",
        default="bpe",
        metavar="{bpe,char,PATH}",
        help="'bpe' trains a byte-level BPE tokenizer (GPT-2's scheme) on the data, 'char' "
        "makes one token per character, a path loads a tokenizer.json (file or folder)",
    )
    group.add_argument(
        "--vocab-size",
        metavar="N",
        type=positive_int,
        default=vocab_size,
        help="vocabulary size of the BPE tokenizer (256 bytes + 3 special tokens + merges)",
    )


def add_model_args(parser: argparse.ArgumentParser, preset: str, dropout: float) -> None:
    sizes = ", ".join(
        f"{name}: {p['n_layer']} layers x {p['n_head']} heads, d_model {p['d_model']}, "
        f"context {p['seq_len']}"
        for name, p in PRESETS.items()
    )
    group = parser.add_argument_group("model (a GPT or a Llama)")
    group.add_argument(
        "--model",
        choices=MODELS,
        default="gpt",
        help="gpt: GPT-2 (learned positions, LayerNorm, GELU); llama: Llama (rotary "
        "positions, RMSNorm, SwiGLU, grouped-query attention, no dropout)",
    )
    group.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=preset,
        help=f"model size ({sizes})",
    )
    for flag, what in (
        ("--n-layer", "transformer blocks"),
        ("--n-head", "attention heads (must divide --d-model)"),
        ("--d-model", "width of the residual stream"),
        ("--seq-len", "context length, also the length of a training row"),
        ("--n-kv-head", "Llama's key/value heads, dividing --n-head (default: half of them)"),
    ):
        group.add_argument(
            flag, type=positive_int, metavar="N", help=f"{what} (default: from --preset)"
        )
    group.add_argument(
        "--dropout",
        type=fraction,
        metavar="P",
        default=dropout,
        help="dropout probability while training",
    )


def add_training_args(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """Flags named after the TrainingArguments fields they set; ``defaults`` per command."""
    group = parser.add_argument_group("training (names as in TrainingArguments)")
    add = group.add_argument
    add(
        "--output-dir",
        metavar="DIR",
        default=defaults["output_dir"],
        help=defaults.get("output_dir_help", "folder for checkpoints, metrics.jsonl, loss.png"),
    )
    add(
        "--max-steps",
        type=any_int,
        metavar="N",
        default=defaults["max_steps"],
        help="optimizer steps to run; <= 0 runs --num-train-epochs epochs instead",
    )
    add(
        "--num-train-epochs",
        type=positive_float,
        metavar="E",
        default=defaults.get("num_train_epochs", 1.0),
        help="passes over the training tokens (used when --max-steps <= 0)",
    )
    add(
        "--per-device-train-batch-size",
        type=positive_int,
        default=defaults["batch_size"],
        metavar="N",
        help="rows per training batch",
    )
    add(
        "--learning-rate",
        type=positive_float,
        default=defaults["learning_rate"],
        metavar="LR",
        help="peak learning rate of AdamW",
    )
    add(
        "--warmup-steps",
        type=nonnegative_int,
        metavar="N",
        help="linear warmup of the learning rate from 0 over this many steps (default: "
        f"{defaults['warmup_steps']}, or a tenth of the run if that is shorter)",
    )
    parser.set_defaults(default_warmup_steps=defaults["warmup_steps"])
    add(
        "--lr-scheduler-type",
        choices=("cosine", "linear", "constant"),
        default="cosine",
        help="learning-rate decay after warmup",
    )
    add(
        "--weight-decay",
        type=nonnegative_float,
        metavar="W",
        default=defaults.get("weight_decay", 0.1),
        help="AdamW's decoupled weight decay (matrices only)",
    )
    add(
        "--max-grad-norm",
        type=nonnegative_float,
        metavar="G",
        default=1.0,
        help="clip the global gradient norm to this; 0 = no clipping",
    )
    add(
        "--logging-steps",
        type=positive_int,
        metavar="N",
        default=defaults.get("logging_steps", 10),
        help="write a line to metrics.jsonl every this many steps",
    )
    every = defaults.get("eval_steps") or "only at the end"
    add(
        "--eval-steps",
        type=positive_int,
        metavar="N",
        default=defaults.get("eval_steps"),
        help=f"evaluate every this many steps (default: {every})",
    )
    add(
        "--eval-batches",
        type=nonnegative_int,
        metavar="N",
        default=20,
        help="batches per evaluation during training; 0 = the whole validation split",
    )
    add(
        "--save-steps",
        type=nonnegative_int,
        metavar="N",
        default=defaults.get("save_steps", 500),
        help="save a checkpoint every this many steps; 0 = only at the end",
    )
    add(
        "--save-total-limit",
        type=positive_int,
        metavar="N",
        default=defaults.get("save_total_limit", 2),
        help="keep only this many newest checkpoints",
    )
    add(
        "--seed",
        type=nonnegative_int,
        metavar="N",
        default=defaults.get("seed", 42),
        help="seeds the model's initialisation and the order of the training batches",
    )
    add(
        "--resume-from-checkpoint",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="continue an interrupted run exactly where it stopped: from a checkpoint folder, "
        "or, with no value, from the newest checkpoint in --output-dir",
    )
    add(
        "--overwrite-output-dir",
        action="store_true",
        help="delete the checkpoints an earlier run left in --output-dir and start afresh",
    )
    add("--disable-tqdm", action="store_true", help="no progress bar")
    add(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute each block's activations in the backward: about half the "
        "training memory, for about a third more arithmetic",
    )
    add(
        "--dry-run",
        action="store_true",
        help="print where a training step's memory goes (per layer: parameters, gradients, "
        "optimizer state, activations, temporaries, FLOPs per token) and the estimated peak "
        "next to the memory available, then exit without training or writing anything",
    )
    add(
        "--ignore-memory-check",
        action="store_true",
        help="train even when the estimated peak memory exceeds the memory available",
    )


def add_sampling_args(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "--max-new-tokens",
        type=positive_int,
        metavar="N",
        default=max_new_tokens,
        help="tokens to generate",
    )
    mode = group.add_mutually_exclusive_group()
    mode.add_argument(
        "--greedy",
        dest="do_sample",
        action="store_false",
        help="always take the most likely next token (default: sample)",
    )
    mode.add_argument(
        "--do-sample",
        dest="do_sample",
        action="store_true",
        help="draw the next token from the model's distribution (the default)",
    )
    parser.set_defaults(do_sample=True)
    group.add_argument(
        "--temperature",
        type=positive_float,
        metavar="T",
        default=0.8,
        help="divides the logits: < 1 sharper, more predictable text; > 1 more random",
    )
    group.add_argument(
        "--top-k",
        type=nonnegative_int,
        metavar="K",
        default=40,
        help="sample only among the k most likely tokens; 0 = no limit",
    )
    group.add_argument(
        "--top-p",
        type=probability,
        metavar="P",
        default=1.0,
        help="sample only among the most likely tokens whose probabilities sum to p (nucleus)",
    )
    group.add_argument(
        "--seed",
        type=nonnegative_int,
        metavar="N",
        help="seed of the sampling, for repeatable text (default: a different draw every run)",
    )
    group.add_argument(
        "--ignore-memory-check",
        action="store_true",
        help="generate even when the estimated memory exceeds the memory available",
    )


def add_checkpoint_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="a checkpoint folder, a training output folder (its newest checkpoint is used), "
        "any Hugging Face model folder, or a model name such as gpt2 found in the local "
        "Hugging Face cache ($HF_HOME; nothing is downloaded)",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="tokenizer.json (file or folder) to use instead of the checkpoint's own",
    )


# -------------------------------------------------------------------- building runs


def training_arguments(
    args: argparse.Namespace, total_steps: int | None = None, **extra: Any
) -> Any:
    """TrainingArguments from the flags; a value it refuses is a usage error.

    Without --warmup-steps the warmup is the command's default, capped at a tenth of
    the run (``total_steps``, or --max-steps when that is not known yet).
    """
    from numpyllm.training_args import TrainingArguments

    values = {name: getattr(args, name) for name in TRAINING_FIELDS}
    if values["warmup_steps"] is None:
        steps = total_steps if total_steps is not None else args.max_steps
        warmup = args.default_warmup_steps
        values["warmup_steps"] = min(warmup, steps // 10) if steps > 0 else warmup
    values["max_grad_norm"] = values["max_grad_norm"] or None  # 0 = no clipping
    values["eval_batches"] = values["eval_batches"] or None  # 0 = all
    values["save_steps"] = values["save_steps"] or None
    values.update(extra)
    try:
        return TrainingArguments(**values)
    except ValueError as exc:
        raise UsageError(_flag_names(str(exc))) from exc


def print_ranks(world: Any, rows: int) -> None:
    """Under mpiexec: the ranks, the batch they share, and each rank's pid and host (the
    launcher names a rank that dies by those alone)."""
    if world.size <= 1:
        return
    ranks = world.size
    print(f"ranks       {ranks} MPI processes, {rows} rows each of a {ranks * rows}-row batch")
    where = ", ".join(
        f"rank {r} pid {pid} on {host}" for r, (host, pid) in enumerate(world.processes)
    )
    print(f"processes   {where}")


def _flag_names(message: str) -> str:
    """Speak of --max-steps rather than max_steps in messages about flags."""
    for name in (*TRAINING_FIELDS, "n_layer", "n_head", "n_kv_head", "d_model", "max_seq_len",
                 "dropout"):  # fmt: skip
        flag = "--seq-len" if name == "max_seq_len" else "--" + name.replace("_", "-")
        for config in ("GPTConfig", "LlamaConfig"):
            message = message.replace(f"{config}.{name}", flag)
        message = message.replace(f"{name} ", f"{flag} ")
        message = message.replace(f"({name})", f"({flag})")
    return message


def model_config(args: argparse.Namespace, vocab_size: int) -> Any:
    """GPTConfig or LlamaConfig (--model) from --preset and its overrides; a value it
    refuses is a usage error."""
    from numpyllm.models.gpt import GPTConfig
    from numpyllm.models.llama import LlamaConfig

    sizes = dict(PRESETS[args.preset])
    for name in sizes:
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    if args.model != "llama" and args.n_kv_head is not None:
        raise UsageError("--n-kv-head is a Llama setting: pass --model llama too")
    try:
        if args.model == "llama":
            n_kv_head = args.n_kv_head
            if n_kv_head is None:  # grouped-query attention, two query heads a key/value head
                n_kv_head = sizes["n_head"] // 2 if sizes["n_head"] % 2 == 0 else sizes["n_head"]
            return LlamaConfig(
                vocab_size=vocab_size,
                n_layer=sizes["n_layer"],
                n_head=sizes["n_head"],
                d_model=sizes["d_model"],
                max_seq_len=sizes["seq_len"],
                n_kv_head=n_kv_head,
            )
        return GPTConfig(
            vocab_size=vocab_size,
            n_layer=sizes["n_layer"],
            n_head=sizes["n_head"],
            d_model=sizes["d_model"],
            max_seq_len=sizes["seq_len"],
            dropout=args.dropout,
        )
    except ValueError as exc:
        raise UsageError(_flag_names(str(exc))) from exc


def with_dropout(model: Any, dropout: float) -> Any:
    """The same model (same weights) with another dropout probability (a model without
    dropout, Llama, refuses any other than 0)."""
    if not hasattr(model.config, "dropout"):
        if dropout:
            raise UsageError(f"{type(model).__name__} has no dropout: --dropout must be 0")
        return model
    if dropout == model.config.dropout:
        return model
    config = dataclasses.replace(model.config, dropout=dropout)
    rebuilt = type(model)(config)
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt


def load_corpus(path: str | None) -> tuple[str | Path, str]:
    """(corpus, description) of --data: the built-in corpus as one string, or the checked
    path of a file or folder, which the tokenizer and the token cache then read piece by
    piece (a corpus larger than the memory streams through; see ``corpus_texts``)."""
    from numpyllm.data import builtin_corpus, text_path

    if path is None:
        return builtin_corpus(), "built-in corpus (Python's own help pages)"
    return text_path(path), str(path)


def corpus_texts(corpus: str | Path) -> Any:
    """What a tokenizer trains on: the string itself, or the path's text as a stream of
    chunks (the same chunks a string of that text is cut into, so the same tokenizer)."""
    from numpyllm.data import iter_chunks

    return corpus if isinstance(corpus, str) else iter_chunks(corpus)


def corpus_size(corpus: str | Path) -> str:
    """'123,456 characters' for a string, '123,456 bytes' for a path (not read to count)."""
    if isinstance(corpus, str):
        return f"{len(corpus):,} characters"
    files = [corpus] if corpus.is_file() else [f for f in corpus.rglob("*.txt") if f.is_file()]
    return f"{sum(f.stat().st_size for f in files):,} bytes"


def make_tokenizer(spec: str, corpus: str | Path, vocab_size: int) -> tuple[Any, str]:
    """(tokenizer, description) for --tokenizer bpe / char / PATH, trained on ``corpus``
    (see ``load_corpus``) as a stream."""
    from numpyllm.tokenizer import Tokenizer

    if spec == "bpe":
        if vocab_size < MIN_BPE_VOCAB:
            raise UsageError(
                f"--vocab-size must be at least {MIN_BPE_VOCAB} for BPE, got {vocab_size}"
            )
        tokenizer = Tokenizer.train_bpe(corpus_texts(corpus), vocab_size=vocab_size)
        return tokenizer, f"byte-level BPE trained on the data, vocab {tokenizer.vocab_size:,}"
    if spec == "char":
        tokenizer = Tokenizer.char_level(corpus_texts(corpus))
        return tokenizer, f"one token per character, vocab {tokenizer.vocab_size:,}"
    tokenizer = Tokenizer.load(spec)
    return tokenizer, f"{spec}, vocab {tokenizer.vocab_size:,}"


def total_steps(args: argparse.Namespace, dataset: Any, seq_len: int) -> int:
    """Steps the run will take: --max-steps, or --num-train-epochs epochs of ``dataset``."""
    from numpyllm.batches import LMBatches

    if args.max_steps > 0:
        return args.max_steps
    per_epoch = LMBatches(dataset, seq_len).steps_per_epoch(args.per_device_train_batch_size)
    return max(1, math.ceil(args.num_train_epochs * per_epoch))


def token_dataset(
    corpus: str | Path, tokenizer: Any, args: argparse.Namespace, val_fraction: float | None = None
) -> Any:
    """The token ids of ``corpus`` (encoded piece by piece into the memory-mapped cache)."""
    from numpyllm.data import TokenDataset

    options = {
        "cache_dir": args.cache_dir,
        "val_fraction": args.val_fraction if val_fraction is None else val_fraction,
    }
    if isinstance(corpus, str):
        return TokenDataset(corpus, tokenizer, **options)
    return TokenDataset.from_path(corpus, tokenizer, **options)


#: what each kind of model a command may take is called in its messages
MODEL_KINDS = {"GPT": "a GPT (GPT-2 family)", "Llama": "a Llama (Llama, Mistral, Qwen2)",
               "BERT": "a BERT", "T5": "a T5"}  # fmt: skip


def resolve_model_folder(spec: str) -> Path:
    """The model folder ``spec`` names: a checkpoint folder, a training output folder (its
    newest checkpoint), any Hugging Face model folder, or a model name such as ``gpt2``
    found in the local Hugging Face cache (never downloaded)."""
    from numpyllm.checkpoint import resolve_checkpoint
    from numpyllm.hf.cache import resolve_model

    return resolve_checkpoint(resolve_model(spec))


def add_adapter_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--adapter",
        metavar="FOLDER",
        help="a LoRA adapter folder (adapter_config.json + adapter_model.safetensors, as "
        "'numpyllm finetune --lora-r' or Hugging Face peft write it) to apply on top of "
        "CHECKPOINT; it is merged into the weights once, so it costs no time per token",
    )


def load_for_inference(
    checkpoint: str,
    tokenizer_path: str | None = None,
    kinds: tuple[str, ...] = ("GPT", "Llama"),
    adapter: str | None = None,
) -> tuple[Any, Any, Path]:
    """(model, tokenizer, folder) from a folder or a model name (``resolve_model_folder``);
    the model must be one of ``kinds`` (class names), the tokenizer the folder's own
    ``tokenizer.json`` unless ``tokenizer_path`` is given; the LoRA ``adapter`` folder, when
    given, is merged into the weights."""
    from numpyllm.checkpoint import TOKENIZER_FILE, load_model
    from numpyllm.tokenizer import Tokenizer

    folder = resolve_model_folder(checkpoint)
    model = load_model(folder)
    kind = type(model).__name__
    if kind not in kinds:
        wanted = " or ".join(MODEL_KINDS.get(k, k) for k in kinds)
        raise ValueError(f"{folder} holds a {kind}; this command needs {wanted} checkpoint")
    if tokenizer_path is not None:
        tokenizer = Tokenizer.load(tokenizer_path)
    elif (folder / TOKENIZER_FILE).is_file():
        tokenizer = Tokenizer.load(folder)
    else:
        raise FileNotFoundError(
            f"{folder} has no {TOKENIZER_FILE}; pass --tokenizer PATH to say which tokenizer "
            "the model was trained with"
        )
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{model.config.vocab_size}: token ids >= {model.config.vocab_size} would be out "
            "of range (is this the model's tokenizer?)"
        )
    if adapter is not None:
        from numpyllm.peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        info(f"[adapter {adapter} merged into {folder}]")
    model.eval()
    return model, tokenizer, folder


def check_output_dir(output_dir: Path, resume: Any, overwrite: bool) -> None:
    """Refuse to mix a fresh run's checkpoints with an earlier run's (the newest would win)."""
    from numpyllm.checkpoint import list_checkpoints

    if resume is not None:
        return
    found = list_checkpoints(output_dir)
    if not found:
        return
    if not overwrite:
        raise UsageError(
            f"{output_dir} already holds checkpoints of an earlier run ({found[-1][1].name}); "
            "continue it with --resume-from-checkpoint, start afresh with "
            "--overwrite-output-dir, or pick another --output-dir"
        )
    for _, path in found:
        shutil.rmtree(path)


def run_dir_of(folder: Path) -> Path:
    """The training output folder a checkpoint folder belongs to (itself if standalone)."""
    from numpyllm.checkpoint import CHECKPOINT_PATTERN

    return folder.parent if CHECKPOINT_PATTERN.fullmatch(folder.name) else folder


def default_output_dir(folder: Path, spec: str, suffix: str) -> Path:
    """Where a command writes what it derives from the model in ``folder``: beside its run
    folder, or under runs/ for a model from the Hugging Face cache (never inside the cache)."""
    from numpyllm.hf.cache import hub_cache_dir

    try:
        folder.resolve().relative_to(hub_cache_dir().resolve())
    except ValueError:
        run_dir = run_dir_of(folder)
        return run_dir.parent / f"{run_dir.name}{suffix}"
    return Path("runs") / f"{spec.replace('/', '--')}{suffix}"


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Ids of ``prompt``; an empty prompt starts from the end-of-text token."""
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    if ids:
        return ids
    start = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    if start is None:
        raise UsageError("the prompt is empty and the tokenizer has no end-of-text token")
    return [start]


def memory_check(model: Any, args: argparse.Namespace, seq_len: int) -> bool:
    """The memory report of one training step with these flags: printed and True (stop
    here) under --dry-run; otherwise InsufficientMemoryError if the step would not fit,
    unless --ignore-memory-check."""
    from numpyllm.memory import memory_report

    if getattr(model, "recompute_activations", False) or not args.gradient_checkpointing:
        recompute = None  # the model's own setting
    else:
        recompute = True
    report = memory_report(model, args.per_device_train_batch_size, seq_len, recompute)
    if args.dry_run:
        print(report)
        return True
    if not args.ignore_memory_check:
        report.check()
    return False


def generate_text(
    model: Any,
    tokenizer: Any,
    prompt: str | list[int],
    max_new_tokens: int,
    do_sample: bool = True,
    temperature: float = 0.8,
    top_k: int = 40,
    top_p: float = 1.0,
    seed: int | None = None,
    num_samples: int = 1,
    ignore_memory_check: bool = False,
) -> list[str]:
    """``num_samples`` continuations of ``prompt`` (text or ids), decoded, prompt not included."""
    import numpy as np

    from numpyllm.generation import generate_decoder_only

    ids = prompt_ids(tokenizer, prompt) if isinstance(prompt, str) else list(prompt)
    rows = np.tile(np.asarray(ids, dtype=np.int64), (num_samples, 1))  # (S, T)
    out = generate_decoder_only(
        model,
        rows,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k or None,
        top_p=top_p,
        eos_token_id=tokenizer.eos_token_id,
        seed=seed,
        crop_context=True,  # a long prompt keeps its newest tokens
        ignore_memory_check=ignore_memory_check,
    )
    return [tokenizer.decode(row[len(ids) :], skip_special_tokens=True) for row in out]


def generate_answer(
    model: Any,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int,
    do_sample: bool = True,
    temperature: float = 0.8,
    top_k: int = 40,
    top_p: float = 1.0,
    seed: int | None = None,
    num_samples: int = 1,
) -> list[str]:
    """An encoder-decoder's (T5's) ``num_samples`` answers to ``prompt``, decoded."""
    import numpy as np

    from numpyllm.generation import generate_encoder_decoder

    ids = tokenizer.encode(prompt, add_special_tokens=True)  # T5's ends with </s>
    if not ids:
        raise UsageError("the prompt is empty: a text-to-text model needs an input")
    rows = np.tile(np.asarray(ids, dtype=np.int64), (num_samples, 1))  # (S, T)
    out = generate_encoder_decoder(
        model,
        rows,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k or None,
        top_p=top_p,
        seed=seed,
    )
    return [tokenizer.decode(row[1:], skip_special_tokens=True) for row in out]


# ------------------------------------------------------------------------- output


def info(message: str) -> None:
    """A message about the run, on stderr (stdout stays the text, for piping)."""
    print(message, file=sys.stderr, flush=True)


def fmt_loss(loss: float) -> str:
    perplexity = math.exp(loss) if loss < 700 else float("inf")
    return f"{loss:.4f} nats/token (perplexity {perplexity:,.2f})"


def debug_enabled() -> bool:
    return os.environ.get("NUMPYLLM_DEBUG", "") not in ("", "0")
