"""The article's "Building your first LLM", step by step, with numpyllm.

1. Choose the framework: numpyllm, every forward and backward pass written in NumPy.
2. Set up the environment: ``pip install numpyllm`` (NumPy, tokenizers, safetensors, tqdm;
   no PyTorch needed).
3. Select a model: ``GPT.from_pretrained(folder)`` loads a Hugging Face GPT-2 folder
   (config.json, model.safetensors, tokenizer.json) given with --model; without one, a
   small GPT is built here, untrained, with a BPE tokenizer trained on the built-in corpus.
4. Tokenize "Hello, world!".
5. Generate text with ``max_length=50``: from an untrained model it is gibberish.
6. Fine-tune with the Trainer on the built-in corpus (Python's help pages).
7. Evaluate on the held-out validation split, and generate again.

    python examples/first_llm.py [--steps 600] [--model path/to/gpt2_folder]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import numpyllm
from numpyllm import GPT, GPTConfig
from numpyllm.data import TokenDataset, builtin_corpus
from numpyllm.tokenizer import Tokenizer
from numpyllm.trainer import Trainer
from numpyllm.training_args import TrainingArguments


def generate(model: GPT, tokenizer: Tokenizer, inputs: dict, **sampling) -> str:
    """Step 5 of the article: generate up to 50 tokens in all, decode without special tokens.

    Greedy by default, as in the article; ``sampling`` may ask for do_sample=True etc."""
    outputs = model.generate(
        np.array([inputs["input_ids"]]),  # (1, T): a batch of one
        max_length=50,
        crop_context=True,  # a context shorter than 50 keeps its newest tokens
        **sampling,
    )
    return tokenizer.decode(outputs[0], skip_special_tokens=True)


def main(argv: list[str] | None = None) -> dict:
    """Run the seven steps; returns the generations and the evaluation before and after."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", metavar="FOLDER", help="a GPT-2 folder to start from")
    parser.add_argument("--steps", type=int, default=600, help="fine-tuning steps")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per step")
    parser.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size")
    parser.add_argument("--n-layer", type=int, default=2, help="blocks of a new model")
    parser.add_argument("--d-model", type=int, default=128, help="width of a new model")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per training row")
    parser.add_argument("--output-dir", default=str(Path("runs") / "examples" / "first_llm"))
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights and batches")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads a training batch is split over (default: the cores, "
                        "for batches large enough to gain)")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    print(f"Step 1. Framework: numpyllm {numpyllm.__version__} on NumPy {np.__version__}")
    print("Step 2. Environment: pip install numpyllm")
    print(f"        torch imported: {'torch' in sys.modules} (not needed)")

    corpus = builtin_corpus()
    if args.model:
        model = GPT.from_pretrained(args.model)
        tokenizer = Tokenizer.load(args.model)
        print(f"Step 3. Model: GPT.from_pretrained({args.model!r})")
    else:
        tokenizer = Tokenizer.train_bpe(corpus, vocab_size=args.vocab_size)
        config = GPTConfig(
            vocab_size=tokenizer.vocab_size, n_layer=args.n_layer, n_head=4,
            d_model=args.d_model, max_seq_len=args.seq_len, dropout=0.0,
        )  # fmt: skip
        model = GPT(config, rng=np.random.default_rng(args.seed))
        print("Step 3. Model: a new GPT (no folder given with --model), not trained yet")
    if args.threads is not None:
        model.num_threads = args.threads
    print(f"        {model.num_parameters():,} parameters, vocabulary {tokenizer.vocab_size}")

    input_text = "Hello, world!"
    inputs = tokenizer(input_text)  # {"input_ids": [...]}
    print(f"Step 4. Tokenize {input_text!r}: {inputs}")

    before_text = generate(model, tokenizer, inputs)
    print(f"Step 5. Generate (max_length=50, greedy): {before_text!r}")

    dataset = TokenDataset(corpus, tokenizer)  # the last 10% of the tokens: validation split
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.steps,  # the article's num_train_epochs=3 would take ~20 minutes here
        per_device_train_batch_size=args.batch_size,
        save_steps=10_000,
        save_total_limit=2,
        learning_rate=3e-3,
        warmup_steps=args.steps // 10,
        seq_len=min(args.seq_len, model.config.max_seq_len),
        eval_batches=10,
        seed=args.seed,
        disable_tqdm=args.quiet,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, tokenizer=tokenizer)
    before = trainer.evaluate()
    print(f"Step 6. Fine-tune: {args.steps} steps of {args.batch_size} rows on the corpus")
    trainer.train()

    after = trainer.evaluate()
    print(
        "Step 7. Evaluate on the validation split:\n"
        f"        loss {before['eval_loss']:.3f} -> {after['eval_loss']:.3f} nats per token, "
        f"perplexity {before['perplexity']:.1f} -> {after['perplexity']:.1f}"
    )
    print(f"        (a model that knows nothing scores ln({tokenizer.vocab_size}) = "
          f"{np.log(tokenizer.vocab_size):.3f})")  # fmt: skip
    after_text = generate(model, tokenizer, inputs)
    sampled = generate(model, tokenizer, inputs, do_sample=True, temperature=0.8, seed=args.seed)
    print(f"        generates now, greedy: {after_text!r}")
    print(f"        sampled (temperature 0.8): {sampled!r}")
    print("        Next: tune the learning rate, the model size and the steps, and evaluate again.")
    return {
        "input_ids": inputs["input_ids"],
        "text_before": before_text,
        "text_after": after_text,
        "text_sampled": sampled,
        "eval_loss_before": before["eval_loss"],
        "eval_loss_after": after["eval_loss"],
    }


if __name__ == "__main__":
    main()
