"""A small GPT for the examples that need a trained one (gpt.py, chatbot.py, pictures.py).

Either loads a checkpoint (``--checkpoint``: a folder written by the Trainer or by
``numpyllm train``, holding the model and its tokenizer) or trains one on the built-in
corpus (Python's own help pages, no download) with the Trainer: a byte-level BPE
tokenizer, a GPT of a few hundred thousand parameters, AdamW with warmup and cosine
decay. The defaults take about a minute on a laptop CPU and reach a validation loss
near 4.05 nats per token (from ln(1024) = 6.9 at the start).

Not an example of its own: the others import it (``import small_gpt``), which works
when they run as scripts because Python puts the script's folder on the path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from numpyllm.checkpoint import load_checkpoint
from numpyllm.data import TokenDataset, builtin_corpus
from numpyllm.models.gpt import GPT, GPTConfig
from numpyllm.tokenizer import Tokenizer
from numpyllm.trainer import Trainer
from numpyllm.training_args import TrainingArguments


def add_arguments(parser: argparse.ArgumentParser, name: str, steps: int = 600) -> None:
    """The flags of the model: --checkpoint, or the size and length of the training run."""
    group = parser.add_argument_group("model (trained here unless --checkpoint is given)")
    add = group.add_argument
    add("--checkpoint", metavar="PATH", help="load this checkpoint instead of training one")
    add("--steps", type=int, default=steps, help="training steps")
    add("--vocab-size", type=int, default=1024, help="BPE vocabulary size")
    add("--n-layer", type=int, default=2, help="transformer blocks")
    add("--n-head", type=int, default=4, help="attention heads per block")
    add("--d-model", type=int, default=128, help="width of the residual stream")
    add("--seq-len", type=int, default=64, help="context length (and training row length)")
    add("--batch-size", type=int, default=16, help="rows per training batch")
    add("--learning-rate", type=float, default=3e-3, help="peak learning rate of AdamW")
    add("--seed", type=int, default=0, help="seeds the weights and the batches")
    add("--threads", type=int, default=None,
        help="threads a training batch is split over (default: the cores, for batches large "
        "enough to gain)")  # fmt: skip
    add("--output-dir", default=str(Path("runs") / "examples" / name), help="checkpoint folder")
    add("--quiet", action="store_true", help="no progress bar")


def load(path: str) -> tuple[GPT, Tokenizer]:
    """A GPT and its tokenizer from a checkpoint folder (or a training output folder)."""
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint.model, GPT):
        raise ValueError(f"{checkpoint.path} holds a {type(checkpoint.model).__name__}, not a GPT")
    if checkpoint.tokenizer is None:
        raise ValueError(f"{checkpoint.path} has no tokenizer.json: which tokenizer was it?")
    print(f"loaded {checkpoint.path}: {checkpoint.model.num_parameters():,} parameters")
    return checkpoint.model, checkpoint.tokenizer


def train(args: argparse.Namespace) -> tuple[GPT, Tokenizer]:
    """Train a GPT on the built-in corpus as the flags say; returns it (in eval mode)."""
    corpus = builtin_corpus()
    tokenizer = Tokenizer.train_bpe(corpus, vocab_size=args.vocab_size)
    dataset = TokenDataset(corpus, tokenizer)  # ids cached on disk; 10% held out (val)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        d_model=args.d_model,
        max_seq_len=args.seq_len,
        dropout=0.0,  # a short run on a small model does not overfit: no need for dropout
    )
    model = GPT(config, rng=np.random.default_rng(args.seed))
    if args.threads is not None:
        model.num_threads = args.threads
    print(
        f"training a GPT of {model.num_parameters():,} parameters for {args.steps} steps on "
        f"the built-in corpus ({len(dataset.train):,} training tokens)"
    )
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.steps // 10,
        logging_steps=max(1, args.steps // 10),
        save_steps=0,  # one checkpoint, at the end
        eval_batches=10,
        seed=args.seed,
        disable_tqdm=args.quiet,
    )
    trainer = Trainer(model, training_args, train_dataset=dataset, tokenizer=tokenizer)
    metrics = trainer.train()
    print(
        f"loss {metrics['train_loss']:.3f} (training, mean), {metrics['eval_loss']:.3f} "
        f"(held out); checkpoint in {metrics['checkpoint']}"
    )
    model.eval()
    return model, tokenizer


def train_or_load(args: argparse.Namespace) -> tuple[GPT, Tokenizer]:
    """``--checkpoint`` loaded, or a freshly trained model."""
    model, tokenizer = load(args.checkpoint) if args.checkpoint else train(args)
    model.eval()  # no dropout from here on
    return model, tokenizer
