"""``numpyllm train``: train a small GPT from scratch on text, on the CPU."""

from __future__ import annotations

import argparse
import math
import re
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np

from numpyllm.cli import common
from numpyllm.distributed import launched_rank

# The defaults: 1500 steps, 26 epochs of the built-in corpus's 116k tokens. Measured on two
# CPU cores: 1 min 33 s on an AMD EPYC (Zen 4); 200 steps in 40 s on an Intel Xeon
# (Sapphire Rapids class), so about 5 min for the whole run there.
DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/gpt",
    "max_steps": 1500,
    "batch_size": 16,
    "learning_rate": 2e-3,
    "warmup_steps": 100,
    "weight_decay": 0.1,
    "eval_steps": 250,
    "save_steps": 500,
    "save_total_limit": 2,
}
DEFAULT_VOCAB = 2048
DEFAULT_PRESET = "small"
DEFAULT_DROPOUT = 0.2
N_SAMPLES = 3
SAMPLE_TOKENS = 60

DESCRIPTION = """\
Train a GPT from scratch: train a tokenizer on the text, build the model, run AdamW
with warmup and cosine decay, evaluate on the held-out end of the text, save
checkpoints (model, optimizer, tokenizer) to --output-dir, and finally print a few
samples and the validation loss next to a baseline that knows only how often each
token occurs (a model that learnt anything about context beats it).

With no arguments: a 1.1M-parameter GPT (--preset small) with a 2048-token BPE
vocabulary learns Python's own help pages (the built-in corpus, ~465k characters),
in 1,500 steps: from about a minute and a half to about five minutes on two CPU
cores, depending on the CPU and how busy it is (measured on AMD EPYC and Intel Xeon).

--model llama trains a Llama instead (rotary positions, RMSNorm, SwiGLU,
grouped-query attention with --n-kv-head key/value heads, no dropout), same presets.

Ctrl-C stops training cleanly: a checkpoint is saved, and
--resume-from-checkpoint continues exactly where it stopped.

examples:
  numpyllm train
  numpyllm train --data my_texts/ --output-dir runs/mine --max-steps 3000
  numpyllm train --tokenizer char --preset tiny --max-steps 200
  numpyllm train --model llama --n-kv-head 1 --output-dir runs/llama
  numpyllm train --resume-from-checkpoint          # continue runs/gpt
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a small GPT (or --model llama) from scratch on text",
        description=DESCRIPTION,
        formatter_class=common.HelpFormatter,
    )
    common.add_data_args(
        parser, "a UTF-8 text file or a folder of .txt files (default: the built-in corpus)"
    )
    common.add_tokenizer_args(parser, DEFAULT_VOCAB)
    common.add_model_args(parser, DEFAULT_PRESET, DEFAULT_DROPOUT)
    common.add_training_args(parser, DEFAULTS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from numpyllm.checkpoint import load_model, resolve_checkpoint
    from numpyllm.models.gpt import GPT
    from numpyllm.models.llama import Llama
    from numpyllm.tokenizer import Tokenizer
    from numpyllm.trainer import Trainer

    output_dir = Path(args.output_dir)
    resume = args.resume_from_checkpoint
    common.training_arguments(args)  # checks the flags before any slow work
    if not args.dry_run and launched_rank() == 0:  # a dry run writes (and deletes) nothing
        common.check_output_dir(output_dir, resume, args.overwrite_output_dir)
    if resume is None:
        common.model_config(args, vocab_size=1)  # the model flags, checked before the data
        if args.tokenizer == "bpe" and args.vocab_size < common.MIN_BPE_VOCAB:
            raise common.UsageError(
                f"--vocab-size must be at least {common.MIN_BPE_VOCAB} for BPE (256 bytes + "
                f"3 special tokens), got {args.vocab_size}"
            )

    started = time.perf_counter()
    corpus, source = common.load_corpus(args.data)
    print(f"data        {source}: {common.corpus_size(corpus)}")
    if resume is not None:
        # The model and tokenizer are the checkpoint's; the Trainer restores the rest.
        folder = resolve_checkpoint(output_dir if resume is True else resume)
        model = load_model(folder)
        tokenizer = Tokenizer.load(folder)
        print(f"resuming    {folder} (its model and tokenizer; model flags are ignored)")
    else:
        t0 = time.perf_counter()
        tokenizer, described = common.make_tokenizer(args.tokenizer, corpus, args.vocab_size)
        print(f"tokenizer   {described} ({time.perf_counter() - t0:.1f} s)")
        config = common.model_config(args, tokenizer.vocab_size)
        model_class = Llama if args.model == "llama" else GPT
        model = model_class(config, rng=np.random.default_rng(args.seed))
    if common.memory_check(model, args, model.config.max_seq_len):
        return 0  # --dry-run: the report is all
    dataset = common.token_dataset(corpus, tokenizer, args)
    config = model.config
    n_train, n_val = len(dataset.train), len(dataset.val)
    print(
        f"tokens      {n_train:,} train / {n_val:,} validation "
        f"({dataset.n_chars / max(len(dataset), 1):.2f} characters per token)"
    )
    print(f"model       {_describe(model)}: {model.num_parameters():,} parameters")
    targs = common.training_arguments(args, common.total_steps(args, dataset, config.max_seq_len))
    trainer = Trainer(model, targs, train_dataset=dataset, tokenizer=tokenizer)
    tokens_per_step = targs.per_device_train_batch_size * config.max_seq_len
    total_tokens = trainer.total_steps * tokens_per_step
    print(
        f"training    {trainer.total_steps:,} steps x {targs.per_device_train_batch_size} rows "
        f"x {config.max_seq_len} tokens = {total_tokens:,} tokens "
        f"({total_tokens / max(n_train, 1):.1f} epochs), AdamW lr {targs.learning_rate:g}, "
        f"{targs.lr_scheduler_type} schedule, warmup {targs.warmup_steps}"
    )
    common.print_ranks(trainer.world, targs.per_device_train_batch_size)
    print(f"output      {output_dir}")

    metrics = trainer.train()
    if trainer.world.rank != 0:
        return 0  # the samples and the final evaluation are rank 0's
    if metrics.get("interrupted"):
        common.info(
            f"numpyllm: training interrupted at step {metrics['global_step']}; checkpoint saved "
            f"to {metrics['checkpoint']}. Continue with: numpyllm train --output-dir "
            f"{shlex.quote(str(output_dir))} --resume-from-checkpoint (and the same --data)"
        )
        return 130
    trainer.save_model()  # the run folder itself: the final model, as transformers loads it

    print()
    model.eval()
    prompts = sample_prompts(dataset, tokenizer, N_SAMPLES)
    for i, prompt in enumerate(prompts):
        continuation = common.generate_text(
            model, tokenizer, prompt, SAMPLE_TOKENS, seed=args.seed + i
        )[0]
        print(f"--- sample {i + 1} ---")
        print(prompt + continuation)
    print("---")
    _report_losses(model, dataset, config.max_seq_len, targs.per_device_train_batch_size)
    minutes, seconds = divmod(time.perf_counter() - started, 60)
    print(f"time        {int(minutes)} min {seconds:.0f} s; checkpoint {metrics['checkpoint']}")
    where = shlex.quote(str(output_dir))
    first = shlex.quote(prompts[0]) if prompts else "'The'"
    print(
        f"Next: numpyllm generate {where} --prompt {first}   |   numpyllm chat {where}"
        f"   |   numpyllm eval {where}"
    )
    return 0


def _describe(model: Any) -> str:
    """The model's kind and shape, for the summary printed before training."""
    config = model.config
    shape = (
        f"{config.n_layer} layers x {config.n_head} heads, d_model {config.d_model}, "
        f"context {config.max_seq_len}"
    )
    if hasattr(config, "n_kv_head"):  # Llama
        return f"Llama, {shape}, {config.n_kv_head} key/value heads, SwiGLU {config.d_ff}"
    return f"GPT, {shape}, dropout {config.dropout}"


def _report_losses(model: Any, dataset: Any, seq_len: int, batch_size: int) -> None:
    """Validation loss of the model next to the unigram baseline of the same tokens."""
    from numpyllm.cli.evaluate import evaluate_tokens

    if len(dataset.val) < 2:
        print("validation  (no validation split: --val-fraction is 0 or the text is too short)")
        return
    loss, count, _ = evaluate_tokens(model, dataset, "val", seq_len, batch_size)
    baseline = dataset.unigram_baseline_loss("val")
    print(f"validation loss   {common.fmt_loss(loss)} on {count:,} tokens")
    print(f"unigram baseline  {common.fmt_loss(baseline)} (token frequencies only, no context)")
    if loss < baseline:
        ratio = math.exp(baseline - loss)
        print(f"                  perplexity {ratio:.1f}x lower than the baseline's")


def sample_prompts(dataset: Any, tokenizer: Any, n: int) -> list[str]:
    """Up to ``n`` distinct prompts: the first word or two of lines spread over the
    validation text (the model has not trained on it)."""
    ids = dataset.val if len(dataset.val) >= 64 else dataset.train
    text = tokenizer.decode(np.asarray(ids[:20_000]), skip_special_tokens=True)
    starts: list[str] = []
    # sentence-like line starts first ("The list"), then any words at the start of a line
    for pattern in (r"(?m)^([A-Z][a-z]+ [a-z]+)", r"(?m)^([^\W\d_]+(?: [^\W\d_]+)?)"):
        starts = list(dict.fromkeys(re.findall(pattern, text)))
        if len(starts) >= n:
            break
    if not starts:
        words = text.split()
        return [" ".join(words[:2])] if words else [""]
    step = max(1, len(starts) // n)
    return starts[::step][:n]
