"""``numpyllm eval CHECKPOINT``: loss and perplexity of a saved model on some text."""

from __future__ import annotations

import argparse
import math
from typing import Any

from numpyllm.cli import common

DESCRIPTION = """\
Score a saved GPT or Llama on text: the mean cross-entropy of each next token (nats per
token) and its exponential, the perplexity. Every token of the chosen split after
the first is predicted once, from up to --seq-len tokens before it.

A BERT is scored as a masked language model: in each window 15% of the tokens are
hidden as BERT was trained (80% [MASK], 10% a random token, 10% unchanged; the same
draw every run) and the loss is that of predicting them from both sides.
CHECKPOINT may be a numpyllm run or checkpoint, any GPT-2, Llama (Mistral, Qwen2) or BERT
folder transformers wrote, or a model name found in the local Hugging Face cache (gpt2,
bert-base-uncased).

Without --data the text is the built-in corpus and the split its validation part
(the last 10%, which `numpyllm train` held out); with --data the whole file is
scored unless --split says otherwise.

examples:
  numpyllm eval runs/gpt
  numpyllm eval runs/gpt/checkpoint-1000 --data notes.txt
  numpyllm eval distilgpt2 --data notes.txt --seq-len 256
  numpyllm eval bert-base-uncased --data notes.txt --seq-len 128
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="loss and perplexity of a saved model on some text",
        description=DESCRIPTION,
        formatter_class=common.HelpFormatter,
    )
    common.add_checkpoint_arg(parser)
    common.add_adapter_arg(parser)
    common.add_data_args(
        parser, "a UTF-8 text file or a folder of .txt files (default: the built-in corpus)"
    )
    parser.add_argument(
        "--split",
        choices=("val", "train", "all"),
        help="which part of the text to score: 'val' (the last --val-fraction), 'train' (the "
        "rest) or 'all' (default: val for the built-in corpus, all for --data)",
    )
    parser.add_argument(
        "--seq-len",
        type=common.positive_int,
        metavar="N",
        help="tokens per scored window (default: the model's context length)",
    )
    parser.add_argument(
        "--batch-size", type=common.positive_int, metavar="N", default=16, help="windows per batch"
    )
    parser.add_argument(
        "--max-batches",
        type=common.nonnegative_int,
        metavar="N",
        default=0,
        help="stop after this many batches; 0 = score the whole split",
    )
    parser.set_defaults(run=run)


def evaluate_tokens(
    model: Any,
    dataset: Any,
    split: str,
    seq_len: int,
    batch_size: int = 16,
    max_batches: int | None = None,
) -> tuple[float, int, int]:
    """(mean loss per predicted token, tokens predicted, window length used) on ``split``.

    Windows of ``seq_len`` ids tile the split (``TokenDataset.iter_windows``), so each
    id after the first is predicted exactly once. A split shorter than ``seq_len`` is
    scored as one shorter window.
    """
    n_split = len(dataset.split_tokens(split))
    if n_split < 2:
        raise ValueError(
            f"the {split!r} split holds {n_split} token(s): too little text to score "
            "(use more text, or another --split / --val-fraction)"
        )
    length = min(seq_len, model.config.max_seq_len, n_split)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i, windows in enumerate(dataset.iter_windows(split, batch_size, length)):
            if max_batches and i >= max_batches:
                break
            out = model(windows, labels=windows)  # (b, L): scores windows[:, 1:]
            n = windows.shape[0] * (windows.shape[1] - 1)
            total += float(out.loss) * n
            count += n
    finally:
        model.train(was_training)
    if not math.isfinite(total):
        raise ValueError(f"the loss on the {split!r} split is {total}: the model is broken")
    return total / count, count, length


MLM_PROBABILITY = 0.15
MLM_SEED = 0


def evaluate_masked(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    split: str,
    seq_len: int,
    batch_size: int = 16,
    max_batches: int | None = None,
) -> tuple[float, int, int]:
    """(mean masked-LM loss per hidden token, tokens hidden, window length used) on ``split``.

    Each window is wrapped in the tokenizer's [CLS] ... [SEP] when it has them, as BERT
    saw its inputs; the tokens to hide are drawn from a fixed seed, so scores compare.
    """
    import numpy as np

    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError("the tokenizer has no mask token: a masked-LM score needs one")
    ends = [t for t in (tokenizer.cls_token_id, tokenizer.sep_token_id) if t is not None]
    if len(ends) != 2:
        ends = []
    n_split = len(dataset.split_tokens(split))
    length = min(seq_len, model.config.max_seq_len - len(ends), n_split)
    if length < 1:
        raise ValueError(f"the {split!r} split holds no tokens to score")
    special = [t for t in (*ends, tokenizer.pad_token_id) if t is not None]
    rng = np.random.default_rng(MLM_SEED)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i, windows in enumerate(dataset.iter_windows(split, batch_size, max(length, 2))):
            if max_batches and i >= max_batches:
                break
            if ends:
                column = np.ones((len(windows), 1), dtype=windows.dtype)
                windows = np.concatenate([column * ends[0], windows, column * ends[1]], axis=1)
            masked, labels = model.mask_tokens(
                windows, mask_id, model.config.vocab_size, rng, MLM_PROBABILITY, special
            )
            n = int(np.sum(labels != -100))
            if n == 0:
                continue
            total += float(model(masked, labels=labels, head="mlm").loss) * n
            count += n
    finally:
        model.train(was_training)
    if count == 0 or not math.isfinite(total):
        raise ValueError(f"no masked-LM score on the {split!r} split: too little text")
    return total / count, count, length


def run(args: argparse.Namespace) -> int:
    model, tokenizer, folder = common.load_for_inference(
        args.checkpoint, args.tokenizer, kinds=("GPT", "Llama", "BERT"), adapter=args.adapter
    )
    corpus, source = common.load_corpus(args.data)
    split = args.split or ("val" if args.data is None else "all")
    val_fraction = 0.0 if split == "all" else args.val_fraction
    if split != "all" and val_fraction == 0.0:
        raise common.UsageError(f"--split {split} needs --val-fraction > 0")
    dataset = common.token_dataset(corpus, tokenizer, args, val_fraction=val_fraction)
    seq_len = args.seq_len or model.config.max_seq_len
    which = "train" if split == "all" else split
    masked = type(model).__name__ == "BERT"
    if masked:
        loss, count, length = evaluate_masked(
            model, tokenizer, dataset, which, seq_len, args.batch_size, args.max_batches or None
        )
    else:
        loss, count, length = evaluate_tokens(
            model, dataset, which, seq_len, args.batch_size, args.max_batches or None
        )
    print(f"checkpoint  {folder}")
    scored = "masked tokens predicted" if masked else "tokens scored"
    print(f"data        {source}, split {split!r}: {count:,} {scored}, windows of {length}")
    print(f"loss        {loss:.4f} nats/token" + (" (masked-LM)" if masked else ""))
    print(f"perplexity  {math.exp(loss) if loss < 700 else float('inf'):,.2f}")
    return 0
