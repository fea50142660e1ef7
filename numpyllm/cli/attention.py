"""``numpyllm attention CHECKPOINT --prompt TEXT --output FILE.png``: draw where a GPT looks."""

from __future__ import annotations

import argparse
from typing import Any

from numpyllm.cli import common

DESCRIPTION = """\
Draw the attention weights of a saved GPT for a prompt, as a heatmap: row i is
token i of the prompt, column j the earlier token it attends to, and the colour
the weight softmax(q_i . k_j / sqrt(d_head)) that head gives it (each row sums
to 1; the upper triangle is empty because a token never sees the future).

Needs matplotlib (pip install numpyllm[plot]).

examples:
  numpyllm attention runs/gpt --prompt "The list of items" --output attention.png
  numpyllm attention runs/gpt --prompt "def f(x):" --output a.png --layer 1 --head 3
  numpyllm attention runs/gpt --prompt "The list" --output mean.png --head -1
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "attention",
        help="draw a model's attention weights for a prompt (PNG)",
        description=DESCRIPTION,
        formatter_class=common.HelpFormatter,
    )
    common.add_checkpoint_arg(parser)
    parser.add_argument("--prompt", required=True, metavar="TEXT", help="the text to look at")
    parser.add_argument(
        "--output", required=True, metavar="FILE.png", help="where to write the picture"
    )
    parser.add_argument(
        "--layer",
        type=common.nonnegative_int,
        default=0,
        metavar="L",
        help="transformer block, counted from 0",
    )
    parser.add_argument(
        "--head",
        type=common.any_int,
        default=0,
        metavar="H",
        help="attention head, counted from 0; -1 draws the mean over all heads",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model, tokenizer, folder = common.load_for_inference(
        args.checkpoint, args.tokenizer, kinds=("GPT",)
    )
    config = model.config
    if args.layer >= config.n_layer:
        raise common.UsageError(
            f"--layer must be in 0..{config.n_layer - 1} (the model has {config.n_layer} "
            f"blocks), got {args.layer}"
        )
    if not -1 <= args.head < config.n_head:
        raise common.UsageError(
            f"--head must be in 0..{config.n_head - 1}, or -1 for the mean over heads "
            f"(the model has {config.n_head} heads), got {args.head}"
        )
    if not tokenizer.encode(args.prompt, add_special_tokens=False):
        raise common.UsageError("--prompt is empty: there is no token to draw")
    from numpyllm.plots import plot_attention

    head = None if args.head == -1 else args.head
    try:
        path = plot_attention(model, tokenizer, args.prompt, args.output, args.layer, head)
    except ImportError as exc:  # matplotlib, an optional extra, is missing
        common.info(f"numpyllm: error: {exc}")
        return 1
    which = "mean over heads" if head is None else f"head {head}"
    common.info(f"[{folder}: layer {args.layer}, {which}]")
    print(path)
    return 0
