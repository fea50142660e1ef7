"""``numpyllm generate CHECKPOINT --prompt TEXT``: continue a prompt with a saved model."""

from __future__ import annotations

import argparse
from typing import Any

from numpyllm.cli import common

DESCRIPTION = """\
Continue a prompt with a saved GPT or Llama, one token at a time (with a key-value cache), or
answer it with a T5 (text to text: the prompt is the encoder's input, e.g.
"translate English to German: The house is small.", and only the answer is printed).
CHECKPOINT may be a numpyllm run or checkpoint, any GPT-2 / Llama / T5 folder transformers
wrote, or a model name found in the local Hugging Face cache (gpt2, t5-small, ...).
Each step turns the model's scores for the next token into a choice: --greedy takes
the most likely token; sampling (the default) draws one at random after dividing
the scores by --temperature and keeping only the --top-k most likely tokens and the
smallest set of them whose probability reaches --top-p.

The prompt and its continuation are printed on stdout; anything else goes to stderr.
A prompt longer than the model's context keeps only its newest tokens as context.

examples:
  numpyllm generate runs/gpt --prompt "The list"
  numpyllm generate runs/gpt --prompt "def" --greedy --max-new-tokens 40
  numpyllm generate runs/gpt --prompt "A" --num-samples 3 --temperature 1.0 --top-p 0.9 --seed 1
  numpyllm generate gpt2 --prompt "The meaning of life is" --greedy
  numpyllm generate t5-small --prompt "translate English to German: Thank you." --greedy
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="continue a prompt with a saved model",
        description=DESCRIPTION,
        formatter_class=common.HelpFormatter,
    )
    common.add_checkpoint_arg(parser)
    common.add_adapter_arg(parser)
    parser.add_argument(
        "--prompt",
        default="",
        metavar="TEXT",
        help="text to continue (default: empty, which starts from the end-of-text token)",
    )
    parser.add_argument(
        "--num-samples",
        type=common.positive_int,
        metavar="N",
        default=1,
        help="how many continuations to draw (each printed under its own header)",
    )
    common.add_sampling_args(parser, max_new_tokens=100)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.do_sample and args.num_samples > 1:
        raise common.UsageError(
            "--greedy gives the same text every time; use --num-samples 1 or sample"
        )
    model, tokenizer, folder = common.load_for_inference(
        args.checkpoint, args.tokenizer, kinds=("GPT", "Llama", "T5"), adapter=args.adapter
    )
    common.info(f"[{folder}: {model.num_parameters():,} parameters]")
    text_to_text = type(model).__name__ == "T5"
    sampling = dict(
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        num_samples=args.num_samples,
    )
    if text_to_text:
        texts = common.generate_answer(
            model, tokenizer, args.prompt, args.max_new_tokens, **sampling
        )
    else:
        texts = common.generate_text(
            model,
            tokenizer,
            args.prompt,
            args.max_new_tokens,
            **sampling,
            ignore_memory_check=args.ignore_memory_check,
        )
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1} ---")
        print(text if text_to_text else args.prompt + text, flush=True)
    return 0
