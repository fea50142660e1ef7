"""A Llama next to a GPT: rotary positions, grouped-query attention, SwiGLU.

Part 1 shows RoPE's relative-position property with numbers. A query and a key are turned
by angles proportional to their positions m and n (``numpyllm.functional.rope``); their
dot product, the attention score, then depends only on m - n. The script moves both
positions by the same shifts and prints the score, which stays the same to rounding, while
the score after GPT-style learned positions (a position vector added to each token) moves.

Part 2 trains a small Llama (RMSNorm, RoPE, grouped-query attention with half as many
key/value heads as query heads, SwiGLU, tied embeddings) and a GPT-2 of about the same
parameter count on the built-in corpus, with the same tokenizer, batches, optimizer and
steps, and prints both held-out losses (nats per token). The Llama has no position table
to learn. With the defaults (seeds 0 to 4, one thread and two, on an AMD EPYC) the Llama
ended at 4.38-4.52 nats per token and the GPT at 4.43-5.04: the Llama lower in every run,
by 0.03 to 0.55 depending on the seed, as the GPT is still falling fast at step 300 (the
range of every figure is in examples/README.md). The maths is in docs/llama.md.

    python examples/llama.py [--steps 300] [--d-model 128] [--seed 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from numpyllm import GPT, GPTConfig, Llama, LlamaConfig, Trainer, TrainingArguments
from numpyllm.data import TokenDataset, builtin_corpus
from numpyllm.functional.rope import rope_forward, rope_tables
from numpyllm.tokenizer import Tokenizer

SHIFTS = (0, 1, 7, 100, 1000)


def relative_positions(head_dim: int, seed: int) -> float:
    """Print the score of one query and one key at positions (m + s, n + s) for several s;
    returns the largest change of the RoPE score (rounding only)."""
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((2, 1, head_dim))  # one query, one key, float64
    table = rng.standard_normal((2000, head_dim)) * 0.5  # learned positions, for contrast
    m, n = 5, 2
    print("score of a query at position m and a key at n = m - 3, shifted together by s:")
    print(f"  {'s':>6}  {'RoPE: rot(q) . rot(k)':>24}  {'learned: (q + p_m) . (k + p_n)':>32}")
    rope_scores = []
    for s in SHIFTS:
        rq, _ = rope_forward(q, *rope_tables(head_dim, 1, offset=m + s))
        rk, _ = rope_forward(k, *rope_tables(head_dim, 1, offset=n + s))
        score = float(rq[0] @ rk[0])
        learned = float((q[0] + table[m + s]) @ (k[0] + table[n + s]))
        rope_scores.append(score)
        print(f"  {s:>6}  {score:>24.15f}  {learned:>32.6f}")
    change = max(abs(s - rope_scores[0]) for s in rope_scores)
    print(f"  largest change of the RoPE score: {change:.1e} (rounding); the learned one moves\n")
    return change


def matched_llama_config(gpt: GPTConfig, vocab: int) -> LlamaConfig:
    """A tied Llama as wide and deep as ``gpt``, with half the key/value heads and the SwiGLU
    width (a multiple of 8) that brings its parameter count closest to the GPT's."""
    d, kv = gpt.d_model, max(1, gpt.n_head // 2)
    gpt_layer = 12 * d * d + 13 * d  # attention 4 d^2 + MLP 8 d^2, biases and LayerNorms
    attention = 2 * d * d + 2 * d * (d * kv // gpt.n_head) + 2 * d  # q, o, k, v, two norms
    d_ff = max(8, 8 * round((gpt_layer - attention) / (3 * d) / 8))
    return LlamaConfig(vocab_size=vocab, n_layer=gpt.n_layer, n_head=gpt.n_head, d_model=d,
                       max_seq_len=gpt.max_seq_len, n_kv_head=kv, d_ff=d_ff,
                       tie_word_embeddings=True)  # fmt: skip


def train(model, name: str, dataset: TokenDataset, tokenizer: Tokenizer, args) -> float:
    """Train with the Trainer (same seed, so the same batches); returns the held-out loss."""
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir, max_steps=args.steps,
            per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
            warmup_steps=args.steps // 10,
            logging_steps=max(1, args.steps // 5), save_steps=0, eval_batches=args.eval_batches,
            seed=args.seed, disable_tqdm=args.quiet,
        )  # fmt: skip
        trainer = Trainer(model, training_args, train_dataset=dataset, tokenizer=tokenizer)
        trainer.train()
        loss = trainer.evaluate()["eval_loss"]
    print(f"{name:<6} {model.num_parameters():>9,} parameters   held-out loss {loss:.3f}")
    return loss


def main(argv: list[str] | None = None) -> dict:
    """Print the relative-position table and both models' held-out losses; returns them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--steps", type=int, default=300, help="training steps of each model")
    add("--vocab-size", type=int, default=1024, help="BPE vocabulary size")
    add("--n-layer", type=int, default=2, help="blocks of each model")
    add("--n-head", type=int, default=4, help="query heads (the Llama has half as many K/V)")
    add("--d-model", type=int, default=128, help="width of the residual stream")
    add("--seq-len", type=int, default=64, help="context length (and training row length)")
    add("--batch-size", type=int, default=16, help="rows per training batch")
    add("--learning-rate", type=float, default=3e-3, help="peak learning rate of AdamW")
    add("--eval-batches", type=int, default=10, help="held-out batches scored at the end")
    add("--seed", type=int, default=0, help="seeds the weights and the batches")
    add("--threads", type=int, default=None,
        help="threads a training batch is split over (default: the cores, for batches large "
        "enough to gain)")  # fmt: skip
    add("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    change = relative_positions(args.d_model // args.n_head, args.seed)

    corpus = builtin_corpus()
    tokenizer = Tokenizer.train_bpe(corpus, vocab_size=args.vocab_size)
    dataset = TokenDataset(corpus, tokenizer)
    gpt_config = GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=args.n_layer,
                           n_head=args.n_head, d_model=args.d_model, max_seq_len=args.seq_len,
                           dropout=0.0)  # fmt: skip
    llama_config = matched_llama_config(gpt_config, tokenizer.vocab_size)
    print(
        f"training each model for {args.steps} steps on the built-in corpus "
        f"({len(dataset.train):,} training tokens, vocabulary {tokenizer.vocab_size}):"
    )
    gpt = GPT(gpt_config, rng=np.random.default_rng(args.seed))
    llama = Llama(llama_config, rng=np.random.default_rng(args.seed))
    if args.threads is not None:
        gpt.num_threads = llama.num_threads = args.threads
    gpt_loss = train(gpt, "GPT", dataset, tokenizer, args)
    llama_loss = train(llama, "Llama", dataset, tokenizer, args)
    print(f"(uniform guessing: ln {tokenizer.vocab_size} = {np.log(tokenizer.vocab_size):.3f})")
    return {
        "rope_score_change": change,
        "gpt_parameters": gpt.num_parameters(),
        "llama_parameters": llama.num_parameters(),
        "gpt_eval_loss": gpt_loss,
        "llama_eval_loss": llama_loss,
        "vocab_size": tokenizer.vocab_size,
    }


if __name__ == "__main__":
    main()
