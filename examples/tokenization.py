"""Tokenization: "Hello, world!" as tokens and ids, with a byte-level BPE and per character.

The article calls ``tokenizer.tokenize`` then ``tokenizer.convert_tokens_to_ids``. Here
the tokenizer is trained on numpyllm's built-in corpus (Python's own help pages, no
download) in a fraction of a second:

* byte-level BPE (GPT-2's scheme) starts from the 256 bytes and merges the most
  frequent adjacent pair, again and again, until the vocabulary has ``--vocab-size``
  entries; frequent words become one token, rare ones several. A leading space is
  part of the token and shows as "Ġ" (GPT-2 prints the byte 0x20 that way).
* char-level gives every character its own id: a tiny vocabulary, long sequences.

    python examples/tokenization.py [--vocab-size 2048] [--text "Hello, world!"]
"""

from __future__ import annotations

import argparse

from numpyllm.data import builtin_corpus
from numpyllm.tokenizer import Tokenizer


def show(name: str, tokenizer: Tokenizer, text: str) -> dict:
    """Print and return the tokens, ids and decoded text of ``text``."""
    tokens = tokenizer.tokenize(text)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    decoded = tokenizer.decode(ids)
    print(f"\n{name} (vocabulary of {tokenizer.vocab_size} ids)")
    print(f"Tokens: {tokens}")
    print(f"Token IDs: {ids}")
    print(f"Decoded: {decoded!r}  (round trip exact: {decoded == text})")
    return {"tokens": tokens, "ids": ids, "decoded": decoded, "vocab_size": tokenizer.vocab_size}


def main(argv: list[str] | None = None) -> dict:
    """Train both tokenizers, print the text's tokens; returns them with compression ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size")
    parser.add_argument("--text", default="Hello, world!", help="the text to tokenize")
    parser.add_argument(
        "--corpus-chars", type=int, default=0, help="train on this many characters (0 = all)"
    )
    args = parser.parse_args(argv)

    corpus = builtin_corpus()
    if args.corpus_chars > 0:
        corpus = corpus[: args.corpus_chars]
    print(f"training corpus: {len(corpus):,} characters of Python's help pages")
    bpe = Tokenizer.train_bpe(corpus, vocab_size=args.vocab_size)
    chars = Tokenizer.char_level(corpus)

    result = {"bpe": show("byte-level BPE", bpe, args.text)}
    result["char"] = show("char-level", chars, args.text)

    # How much each one compresses the corpus: characters per token.
    print("\ncharacters per token on the corpus (more = shorter sequences for the model):")
    ratios = {}
    for name, tokenizer in (("char-level", chars), ("byte-level BPE", bpe)):
        n_tokens = sum(len(ids) for ids in tokenizer.encode_batch(corpus.split("\n\n")))
        ratios[name] = len(corpus.replace("\n\n", "")) / n_tokens
        print(f"  {name:<15} {ratios[name]:.2f}")
    result["chars_per_token"] = ratios

    # Bytes make BPE total: text it never saw still encodes, and decodes back exactly.
    # A character-level vocabulary only knows the characters of its corpus: the rest -> <unk>.
    unseen = "naïve café ☕ 東京"
    print(f"\nunseen text {unseen!r}:")
    for name, tokenizer in (("byte-level BPE", bpe), ("char-level", chars)):
        ids = tokenizer.encode(unseen)
        back = tokenizer.decode(ids)
        print(f"  {name:<15} {len(ids):2d} tokens, decodes to {back!r}")
        result[f"unseen_{'bpe' if tokenizer is bpe else 'char'}_round_trip"] = back == unseen
    return result


if __name__ == "__main__":
    main()
