"""GPT generates text one token at a time: greedy, temperature, top-k and top-p sampling.

The article asks a hosted model to continue "Once upon a time" for 50 tokens. Here a
small GPT trained on the built-in corpus (or loaded with --checkpoint) does the same
on your CPU. Each step the model gives a probability for every possible next token:

  greedy        take the most likely one (deterministic, tends to loop)
  temperature   divide the logits by T before the softmax: T < 1 sharpens, T > 1 flattens
  top-k         sample only among the k most likely tokens
  top-p         sample only among the fewest most likely tokens whose probabilities
                add up to p (the "nucleus": its size adapts to how sure the model is)

The corpus is Python's documentation, so expect Python-flavoured stories.

    python examples/gpt.py [--steps 600] [--checkpoint runs/examples/gpt] [--max-tokens 50]
"""

from __future__ import annotations

import argparse

import numpy as np
import small_gpt

from numpyllm.generation import top_p_filter


def next_token_table(model, tokenizer, ids: list[int]) -> dict:
    """Print the model's five most likely next tokens, and how temperature and top-p act."""
    logits = model(np.array([ids])).logits[0, -1].astype(np.float64)  # (V,) for the last token
    result = {}
    print("\nP(next token | prompt), the five most likely:")
    for temperature in (1.0, 0.7, 1.5):
        scaled = logits / temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        top = np.argsort(-probs)[:5]
        row = ", ".join(f"{tokenizer.decode([int(i)])!r} {probs[i]:.3f}" for i in top)
        print(f"  temperature {temperature:<4} {row}")
        result[temperature] = [(tokenizer.decode([int(i)]), float(probs[i])) for i in top]
    kept = int(np.isfinite(top_p_filter(logits[None], 0.9)).sum())
    print(f"  top-p 0.9 keeps {kept} of {logits.size} tokens; top-k 10 keeps 10")
    result["nucleus_size"] = kept
    return result


def main(argv: list[str] | None = None) -> dict:
    """Generate with each strategy; returns the texts and the next-token table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="Once upon a time", help="text to continue")
    parser.add_argument("--max-tokens", type=int, default=50, help="new tokens per sample")
    small_gpt.add_arguments(parser, "gpt")
    args = parser.parse_args(argv)
    model, tokenizer = small_gpt.train_or_load(args)

    ids = tokenizer.encode(args.prompt)
    print(f"\nprompt {args.prompt!r} -> {len(ids)} tokens {tokenizer.tokenize(args.prompt)}")
    result = {"next_token": next_token_table(model, tokenizer, ids)}

    strategies = {
        "greedy": {"do_sample": False},
        "temperature 0.7": {"do_sample": True, "temperature": 0.7},
        "temperature 1.5": {"do_sample": True, "temperature": 1.5},
        "top-k 10": {"do_sample": True, "top_k": 10},
        "top-p 0.9": {"do_sample": True, "top_p": 0.9},
    }
    def generate(**options) -> str:
        out = model.generate(
            np.array([ids]),  # (1, T): a batch of one prompt
            max_new_tokens=args.max_tokens,
            eos_token_id=tokenizer.eos_token_id,
            crop_context=True,  # past the context length, keep the newest tokens
            **options,
        )  # (1, T + new)
        return tokenizer.decode(out[0], skip_special_tokens=True)

    texts = {}
    for name, options in strategies.items():
        texts[name] = generate(seed=args.seed, **options)  # the same seed, the same sample
        print(f"\n--- {name} ---\n{texts[name]}")
    result["texts"] = texts

    # Greedy has no randomness; sampling with another seed gives another text.
    result["greedy_repeats"] = generate(do_sample=False) == texts["greedy"]
    other = generate(do_sample=True, temperature=0.7, seed=args.seed + 1)
    result["seed_changes_sample"] = other != texts["temperature 0.7"]
    print(
        f"\ngreedy again gives the same text: {result['greedy_repeats']}; "
        f"temperature 0.7 with another seed gives another: {result['seed_changes_sample']}"
    )
    return result


if __name__ == "__main__":
    main()
