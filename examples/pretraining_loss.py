"""The pretraining losses: next-token prediction (GPT) and masked-token prediction (BERT).

The article computes ``model(input_ids, labels=input_ids).loss`` for "The quick brown
fox". numpyllm's GPT takes the same call: the labels are the inputs themselves, and the
model shifts them, so position t is scored on how much probability it gave token t+1:

    loss = mean over t of  -log p(token_{t+1} | tokens_0..t)        (nats per token)

An untrained model scores about ln(vocabulary size): its weights start small (std 0.02),
so its logits are all near 0 and its prediction is nearly uniform, 1/V for every token,
and -log(1/V) = ln V. Training (here a short run of AdamW on the built-in corpus, the
forward / backward / step loop written out) brings the loss down.

BERT is pretrained differently: about 15% of the tokens are chosen, most of them replaced
by a mask token, and the model predicts the originals from the context on BOTH sides. Its
loss is the same cross-entropy, averaged over the chosen tokens only; untrained, again ln V.

    python examples/pretraining_loss.py [--steps 300] [--vocab-size 1024]
"""

from __future__ import annotations

import argparse

import numpy as np

from numpyllm import BERT, GPT, BertConfig, GPTConfig
from numpyllm.data import TokenDataset, builtin_corpus
from numpyllm.functional.softmax import log_softmax_forward
from numpyllm.optim import AdamW
from numpyllm.tokenizer import Tokenizer

TEXT = "The quick brown fox"


def per_token_losses(model: GPT, tokenizer: Tokenizer, ids: list[int]) -> float:
    """Print -log p(next token) at every position of ``ids``; returns their mean (the loss)."""
    input_ids = np.array([ids])  # (1, T)
    out = model(input_ids, labels=input_ids)
    log_probs, _ = log_softmax_forward(out.logits[0].astype(np.float64))  # (T, V)
    for t in range(len(ids) - 1):
        seen = tokenizer.decode(ids[: t + 1])
        target = tokenizer.decode([ids[t + 1]])
        print(f"    {seen!r:<22} -> {target!r:<10} -log p = {-log_probs[t, ids[t + 1]]:.3f}")
    print(f"  Loss: {out.loss:.4f}   (the mean of those {len(ids) - 1} numbers)")
    return out.loss


def held_out_loss(model: GPT, dataset: TokenDataset, seq_len: int, batches: int = 8) -> float:
    """Mean loss over the first windows of the held-out split."""
    losses = []
    for i, windows in enumerate(dataset.iter_windows("val", 16, seq_len)):
        if i == batches:
            break
        losses.append(model(windows, labels=windows).loss)
    return float(np.mean(losses))


def main(argv: list[str] | None = None) -> dict:
    """Print the losses; returns them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="GPT training steps")
    parser.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size")
    parser.add_argument("--d-model", type=int, default=128, help="width of both models")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per training row")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per training step")
    parser.add_argument("--seed", type=int, default=0, help="seeds weights, batches, masks")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads a training batch is split over (default: the cores, "
                        "for batches large enough to gain)")  # fmt: skip
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    corpus = builtin_corpus()
    tokenizer = Tokenizer.train_bpe(corpus, vocab_size=args.vocab_size)
    V = tokenizer.vocab_size
    dataset = TokenDataset(corpus, tokenizer)
    ids = tokenizer.encode(TEXT)
    print(f"{TEXT!r} -> tokens {tokenizer.tokenize(TEXT)} -> ids {ids}")

    # --- GPT, untrained: the loss is about ln V.
    config = GPTConfig(vocab_size=V, n_layer=2, n_head=4, d_model=args.d_model,
                       max_seq_len=args.seq_len, dropout=0.0)  # fmt: skip
    gpt = GPT(config, rng=rng)
    if args.threads is not None:
        gpt.num_threads = args.threads
    print(f"\nGPT ({gpt.num_parameters():,} parameters), untrained:")
    untrained = per_token_losses(gpt, tokenizer, ids)
    logits = gpt(np.array([ids])).logits
    print(
        f"  ln(V) = ln({V}) = {np.log(V):.4f}: the logits are all small (std {logits.std():.2f}),"
        f"\n  so every token gets a probability close to 1/{V}"
    )

    # --- Pretraining, the loop written out: forward, backward, optimizer step.
    optimizer = AdamW(gpt.parameters(), lr=3e-3, weight_decay=0.0)
    print(f"\npretraining: {args.steps} steps on windows of the built-in corpus")
    log_every = max(1, args.steps // 5)
    for step in range(1, args.steps + 1):
        windows = dataset.sample_windows("train", args.batch_size, args.seq_len, rng)  # (B, T)
        loss = gpt(windows, labels=windows).loss  # next-token loss of every position
        gpt.backward()  # fills p.grad for every parameter
        optimizer.step()  # p.data -= update(p.grad)
        optimizer.zero_grad()
        if step == 1 or step % log_every == 0:
            print(f"  step {step:4d}  loss {loss:.3f}")
    held_out = held_out_loss(gpt, dataset, args.seq_len)
    print(f"  held-out loss {held_out:.3f}")
    print(f"\nGPT after {args.steps} steps, on {TEXT!r}:")
    trained = per_token_losses(gpt, tokenizer, ids)

    # --- BERT's masked-LM loss, untrained.
    bert_config = BertConfig(
        vocab_size=V, n_layer=2, n_head=4, d_model=args.d_model, max_seq_len=args.seq_len,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    bert = BERT(bert_config, rng=rng)
    sentence = np.array([tokenizer.encode("The quick brown fox jumps over the lazy dog.")])
    masked, labels = sentence, np.full(sentence.shape, -100)
    while (labels == -100).all():  # a short sentence may draw no token at all: draw again
        masked, labels = BERT.mask_tokens(
            sentence, tokenizer.mask_token_id, V, rng, special_ids=tokenizer.all_special_ids
        )
    print(f"\nBERT ({bert.num_parameters():,} parameters), masked language modelling:")
    print(f"  input  {tokenizer.decode(masked[0])!r}")
    targets = [tokenizer.decode([int(i)]) for i in sentence[0][labels[0] != -100]]
    print(f"  labels {targets} at positions {np.flatnonzero(labels[0] != -100).tolist()}")
    windows = dataset.sample_windows("train", args.batch_size, args.seq_len, rng)
    masked, labels = BERT.mask_tokens(
        windows, tokenizer.mask_token_id, V, rng, special_ids=tokenizer.all_special_ids
    )
    mlm_loss = bert(masked, labels=labels, head="mlm").loss
    chosen = float(np.mean(labels != -100))
    print(
        f"  on {args.batch_size} corpus windows, {chosen:.1%} of tokens chosen: Loss "
        f"{mlm_loss:.4f} (ln V = {np.log(V):.4f})"
    )
    return {
        "ln_vocab": float(np.log(V)),
        "untrained_loss": untrained,
        "trained_loss": trained,
        "held_out_loss": held_out,
        "mlm_loss": mlm_loss,
        "masked_fraction": chosen,
    }


if __name__ == "__main__":
    main()
