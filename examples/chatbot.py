"""The article's chatbot: ``generate_response(input_text)`` and a "You:" loop, on a small GPT.

Step 1 (install) is ``pip install numpyllm``; step 2 loads a model: a checkpoint from
--checkpoint (e.g. one written by ``numpyllm train`` or by examples/gpt.py), or, without
one, a small GPT trained here for a minute on the built-in corpus. Step 3 is
``generate_response``; step 4 the loop, which stops at "exit", "quit" or the end of
the input, so it also works with piped text:

    python examples/chatbot.py [--checkpoint runs/examples/gpt] [--steps 600]
    printf 'What is a list?\\nquit\\n' | python examples/chatbot.py --checkpoint runs/examples/gpt

Do not expect conversation: the model has only ever read Python's help pages, so it
answers with something that looks like them. A chatbot is this same loop around a
model trained on dialogue, at a much larger scale.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np
import small_gpt


def make_generate_response(
    model, tokenizer, max_length: int = 100, greedy: bool = False, seed: int = 0
) -> Callable[[str], str]:
    """The article's ``generate_response``, bound to a model and its tokenizer."""
    calls = [seed]  # each reply draws with the next seed: same session, same replies

    def generate_response(input_text: str) -> str:
        inputs = tokenizer.encode(input_text)  # text -> token ids
        outputs = model.generate(
            np.array([inputs]),  # (1, T): a batch of one
            max_length=max(max_length, len(inputs) + 10),  # prompt + reply, in tokens
            do_sample=not greedy,  # the article's call is greedy; sampling loops less
            temperature=0.8,
            top_k=40,
            eos_token_id=tokenizer.eos_token_id,
            seed=calls[0],
            crop_context=True,  # a long conversation keeps its newest tokens as context
        )
        calls[0] += 1
        # The article decodes outputs[0] whole, which repeats the user's words; keep only
        # the new tokens, and stop at the first blank line, where a reply reads finished.
        response = tokenizer.decode(outputs[0][len(inputs) :], skip_special_tokens=True)
        return response.strip().split("\n\n")[0]

    return generate_response


def chat(generate_response: Callable[[str], str]) -> list[tuple[str, str]]:
    """The article's loop; returns the (input, response) pairs of the session."""
    echo = not sys.stdin.isatty()  # piped input is not shown by the terminal: print it
    exchanges = []
    while True:
        try:
            user_input = input("You: ")
        except EOFError:  # the piped text ran out, or Ctrl-D
            print()
            break
        if echo:
            print(user_input)
        if user_input.lower() in ["exit", "quit"]:
            break
        if not user_input.strip():
            continue  # nothing to answer
        response = generate_response(user_input)
        print(f"Chatbot: {response}")
        exchanges.append((user_input, response))
    return exchanges


def main(argv: list[str] | None = None) -> list[tuple[str, str]]:
    """Load or train the model, then chat on stdin; returns the exchanges."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-length", type=int, default=100, help="tokens, prompt + reply")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding, as the article")
    small_gpt.add_arguments(parser, "chatbot")
    args = parser.parse_args(argv)
    model, tokenizer = small_gpt.train_or_load(args)
    generate_response = make_generate_response(
        model, tokenizer, args.max_length, args.greedy, args.seed
    )
    print('\nType a message ("exit" or "quit" to stop).')
    return chat(generate_response)


if __name__ == "__main__":
    main()
