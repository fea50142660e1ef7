"""``numpyllm chat CHECKPOINT``: the chatbot loop, ``You:`` / ``Chatbot:``, with a saved model."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from numpyllm.cli import common

EXIT_WORDS = ("exit", "quit")
USER, BOT = "You:", "Chatbot:"

DESCRIPTION = """\
Talk with a saved GPT or Llama. Each line you type is added to a short transcript of the
conversation ("You: ... / Chatbot: ..."), the model continues the transcript, and its
continuation up to the end of the line is the reply. The last --history-turns
exchanges are kept as context, oldest dropped first so that the transcript and the
reply fit in the model's context.

A small model trained on a few hundred thousand characters has never seen a
conversation: expect replies in the style of its training text, not answers.

CHECKPOINT may also be any GPT-2 or Llama (Mistral, Qwen2) folder transformers wrote, or
a model name found in the local Hugging Face cache (numpyllm chat gpt2).

Type exit or quit (any case), or end the input (Ctrl-D), to leave. Input may be
piped:  printf 'hello\\nquit\\n' | numpyllm chat runs/gpt
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="chat with a saved model (You: / Chatbot: prompt loop)",
        description=DESCRIPTION,
        formatter_class=common.HelpFormatter,
    )
    common.add_checkpoint_arg(parser)
    common.add_adapter_arg(parser)
    parser.add_argument(
        "--history-turns",
        type=common.nonnegative_int,
        metavar="N",
        default=3,
        help="earlier exchanges kept as context; 0 = answer each line on its own",
    )
    common.add_sampling_args(parser, max_new_tokens=60)
    parser.set_defaults(run=run)


def build_prompt(
    tokenizer: Any, history: list[tuple[str, str]], message: str, budget: int
) -> list[int]:
    """Ids of the transcript ending in ``Chatbot:``, at most ``budget`` of them.

    Whole exchanges are dropped from the oldest until it fits; if the new message
    alone is too long, only its newest tokens are kept.
    """
    turns = list(history)
    while True:
        text = "".join(f"{USER} {u}\n{BOT} {b}\n" for u, b in turns)
        text += f"{USER} {message}\n{BOT}"
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= budget or not turns:
            return ids[-budget:]
        turns.pop(0)


def reply_from(continuation: str) -> str:
    """The model's reply: its continuation up to the end of the first non-empty line,
    and never past the point where it starts writing the user's next turn."""
    cut = re.split(rf"(?:{re.escape(USER)}|{re.escape(BOT)})", continuation, maxsplit=1)[0]
    for line in cut.split("\n"):
        if line.strip():
            return line.strip()
    return "..."


def run(args: argparse.Namespace) -> int:
    model, tokenizer, folder = common.load_for_inference(
        args.checkpoint, args.tokenizer, adapter=args.adapter
    )
    context = model.config.max_seq_len
    max_new = min(args.max_new_tokens, context - 1)
    budget = max(context - max_new, context // 2)  # room for the reply, most of the time
    common.info(
        f"[{folder}: {model.num_parameters():,} parameters, context {context} tokens. "
        f"Type exit or quit to leave.]"
    )
    history: list[tuple[str, str]] = []
    turn = 0
    while True:
        try:
            message = input(f"{USER} ")
        except EOFError:  # input ended (Ctrl-D, or the end of piped text)
            print()
            return 0
        if not sys.stdin.isatty():
            print(message)  # echo piped input, so the transcript on stdout reads as a dialogue
        message = message.strip()
        if message.lower() in EXIT_WORDS:
            return 0
        if not message:
            continue
        ids = build_prompt(
            tokenizer, history[-args.history_turns :] if args.history_turns else [], message, budget
        )
        continuation = common.generate_text(
            model,
            tokenizer,
            ids,
            max_new,
            do_sample=args.do_sample,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=None if args.seed is None else args.seed + turn,
            ignore_memory_check=args.ignore_memory_check,
        )[0]
        reply = reply_from(continuation)
        print(f"{BOT} {reply}", flush=True)
        history.append((message, reply))
        del history[: -max(args.history_turns, 1)]
        turn += 1
