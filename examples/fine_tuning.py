"""Pretrain a small GPT, save it, then fine-tune it on other text with the article's Trainer code.

The article's fine-tuning is

    training_args = TrainingArguments(output_dir='./results', num_train_epochs=3,
                                      per_device_train_batch_size=4, save_steps=10_000,
                                      save_total_limit=2)
    trainer = Trainer(model=model, args=training_args, train_dataset=train_dataset)
    trainer.train()

and numpyllm runs exactly that (plus a learning rate: 2e-3 suits this small model better
than the default 5e-4). Here:

1. pretraining: a GPT learns from the built-in corpus (Python's help pages) for
   --pretrain-steps steps; a checkpoint every quarter of the run, of which
   save_total_limit=2 keeps the newest two;
2. the last checkpoint is loaded back from disk, as you would load a pretrained model;
3. fine-tuning: three epochs of the article's settings on a text the script makes up,
   simple sentences like "The cat sees a blue car at night." The loss on held-out
   sentences of that text falls from about 5.2 to 0.4-0.6 nats per token; the loss on
   Python's help pages rises (the model forgets what it no longer sees).

    python examples/fine_tuning.py [--pretrain-steps 300] [--sentences 1000] [--epochs 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from numpyllm.checkpoint import list_checkpoints, load_checkpoint
from numpyllm.data import TokenDataset, builtin_corpus
from numpyllm.models.gpt import GPT, GPTConfig
from numpyllm.tokenizer import Tokenizer
from numpyllm.trainer import Trainer
from numpyllm.training_args import TrainingArguments

SUBJECTS = ["the cat", "the dog", "a bird", "my friend", "the teacher", "a child", "the farmer"]
VERBS = ["sees", "likes", "finds", "follows", "paints", "visits", "wants"]
OBJECTS = ["the red ball", "a small house", "the old tree", "a blue car", "the green garden",
           "a big boat", "the yellow kite"]  # fmt: skip
TIMES = ["in the morning", "at night", "every day", "after lunch", "in the rain"]


def make_sentences(count: int, rng: np.random.Generator) -> str:
    """``count`` sentences "Subject verb object time.", four to a line."""
    picks = [rng.integers(0, len(words), size=count) for words in (SUBJECTS, VERBS, OBJECTS, TIMES)]
    sentences = [
        f"{SUBJECTS[s].capitalize()} {VERBS[v]} {OBJECTS[o]} {TIMES[t]}."
        for s, v, o, t in zip(*picks)
    ]
    lines = [" ".join(sentences[i : i + 4]) for i in range(0, count, 4)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    """Pretrain, save, load, fine-tune; returns the losses before and after."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=300, help="pretraining steps")
    parser.add_argument("--sentences", type=int, default=1000, help="sentences of new text")
    parser.add_argument("--epochs", type=float, default=3, help="fine-tuning epochs")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="fine-tuning rate")
    parser.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size")
    parser.add_argument("--n-layer", type=int, default=2, help="transformer blocks")
    parser.add_argument("--d-model", type=int, default=128, help="width of the model")
    parser.add_argument("--seq-len", type=int, default=64, help="context length")
    parser.add_argument("--output-dir", default=str(Path("runs") / "examples" / "fine_tuning"))
    parser.add_argument("--seed", type=int, default=0, help="seeds weights, batches, text")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads a training batch is split over (default: the cores, "
                        "for batches large enough to gain)")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    rng = np.random.default_rng(args.seed)

    # 1. Pretraining on the built-in corpus.
    corpus = builtin_corpus()
    tokenizer = Tokenizer.train_bpe(corpus, vocab_size=args.vocab_size)
    corpus_data = TokenDataset(corpus, tokenizer)  # 90% train, the last 10% held out
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, n_layer=args.n_layer, n_head=4,
        d_model=args.d_model, max_seq_len=args.seq_len, dropout=0.0,
    )  # fmt: skip
    model = GPT(config, rng=rng)
    if args.threads is not None:
        model.num_threads = args.threads
    print(f"1. pretraining a GPT of {model.num_parameters():,} parameters on the built-in corpus")
    pretrain_args = TrainingArguments(
        output_dir=out / "pretrain",
        max_steps=args.pretrain_steps,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        warmup_steps=args.pretrain_steps // 10,
        save_steps=max(1, args.pretrain_steps // 4),  # four checkpoints ...
        save_total_limit=2,  # ... of which the newest two are kept
        eval_batches=10,
        seed=args.seed,
        disable_tqdm=args.quiet,
    )
    pretrainer = Trainer(model, pretrain_args, train_dataset=corpus_data, tokenizer=tokenizer)
    metrics = pretrainer.train()
    kept = [path.name for _, path in list_checkpoints(out / "pretrain")]
    print(f"   held-out loss {metrics['eval_loss']:.3f}; checkpoints kept: {kept}")

    # 2. Load the pretrained model back, as from any saved checkpoint.
    checkpoint = load_checkpoint(out / "pretrain")  # the newest checkpoint in the folder
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    if args.threads is not None:
        model.num_threads = args.threads
    print(f"2. loaded {checkpoint.path}")

    # 3. Fine-tuning on new text, with the article's arguments.
    text = make_sentences(args.sentences, rng)
    print(f"3. fine-tuning on {args.sentences} made-up sentences, e.g. {text.splitlines()[0]!r}")
    train_dataset = TokenDataset(text, tokenizer)  # the last 10% of the sentences held out
    training_args = TrainingArguments(
        output_dir=out / "results",
        num_train_epochs=args.epochs,
        per_device_train_batch_size=4,
        save_steps=10_000,
        save_total_limit=2,
        learning_rate=args.learning_rate,
        seed=args.seed,
        disable_tqdm=args.quiet,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_dataset)
    before = trainer.evaluate()["eval_loss"]  # the held-out sentences
    before_corpus = trainer.evaluate(corpus_data)["eval_loss"]  # the held-out help pages
    print(f"   {trainer.total_steps} steps ({args.epochs} epochs of {trainer.steps_per_epoch})")
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    after_corpus = trainer.evaluate(corpus_data)["eval_loss"]

    print("\nheld-out loss (nats per token)    before fine-tuning   after")
    print(f"  new sentences                    {before:>8.3f}         {after:>8.3f}")
    print(f"  Python's help pages              {before_corpus:>8.3f}         {after_corpus:>8.3f}")
    print(
        "The new sentences became easy to predict; the help pages got harder: a small model\n"
        "trained only on new text forgets the old (mixing some old text in limits that)."
    )
    prompt = tokenizer.encode("The dog")
    sample = model.generate(np.array([prompt]), max_new_tokens=24, crop_context=True)
    continuation = tokenizer.decode(sample[0])
    print(f"\ngreedy continuation of 'The dog': {continuation!r}")
    return {
        "pretrain_eval_loss": metrics["eval_loss"],
        "checkpoints_kept": kept,
        "new_text_loss_before": before,
        "new_text_loss_after": after,
        "corpus_loss_before": before_corpus,
        "corpus_loss_after": after_corpus,
        "sample": continuation,
    }


if __name__ == "__main__":
    main()
