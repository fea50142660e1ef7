"""``numpyllm finetune CHECKPOINT --data FILE``: continue training a saved model on new text."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from numpyllm.cli import common
from numpyllm.cli.evaluate import evaluate_tokens
from numpyllm.distributed import launched_rank

DEFAULTS: dict[str, Any] = {
    "output_dir": None,
    "output_dir_help": "folder for the fine-tuned checkpoints "
    "(default: the checkpoint's run folder + '-finetuned')",
    "max_steps": 200,
    "batch_size": 8,
    "learning_rate": 3e-4,
    "warmup_steps": 20,
    "weight_decay": 0.1,
    "eval_steps": None,
    "save_steps": 0,
    "save_total_limit": 2,
}

DESCRIPTION = """\
Fine-tune: start from a saved GPT (or Llama) and its tokenizer and keep training on new text,
so the model picks up that text's words and style while keeping what it learnt
before. The GPT may be one numpyllm trained or any GPT-2 or Llama folder transformers wrote
(gpt2, distilgpt2, ... from the Hugging Face cache by name). The new text is
encoded with the checkpoint's own tokenizer (the vocabulary cannot change), and its
last --val-fraction is held out: the validation loss on it is printed before and
after, so you can see what fine-tuning changed.

The optimizer starts afresh (new AdamW state, new warmup); a lower learning rate
than pretraining's keeps the update gentle.

With --lora-r the model's weights stay frozen: small LoRA matrices are trained on the
chosen projections instead (--lora-target-modules), and the result is an adapter folder
(adapter_config.json + adapter_model.safetensors, Hugging Face peft's format), used with
'--adapter FOLDER' by generate, chat and eval; --merge also writes the merged model. An
interrupted LoRA run continues with --resume-from-checkpoint: its checkpoints (in
OUTPUT_DIR/training) hold the adapter, its optimizer state and the trainer's state.

examples:
  numpyllm finetune runs/gpt --data my_notes.txt
  numpyllm finetune runs/gpt --data poems/ --num-train-epochs 3 --max-steps -1
  numpyllm finetune distilgpt2 --data my_notes.txt --seq-len 128 --max-steps 50
  numpyllm finetune runs/gpt --data my_notes.txt --lora-r 8 --lora-target-modules c_attn,c_proj
  numpyllm generate runs/gpt --adapter runs/gpt-lora --prompt 'Once'
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="continue training a saved model on new text",
        description=DESCRIPTION,
        formatter_class=common.HelpFormatter,
    )
    common.add_checkpoint_arg(parser)
    common.add_data_args(parser, "the new text: a UTF-8 file or a folder of .txt files", True)
    parser.add_argument(
        "--seq-len",
        type=common.positive_int,
        metavar="N",
        help="tokens per training row, at most the model's context (default: the context)",
    )
    parser.add_argument(
        "--dropout",
        type=common.fraction,
        metavar="P",
        help="dropout while fine-tuning (default: the checkpoint's)",
    )
    lora = parser.add_argument_group("LoRA (names as in peft's LoraConfig)")
    lora.add_argument(
        "--lora-r",
        type=common.positive_int,
        metavar="R",
        help="train a rank-R LoRA adapter instead of every weight; saves an adapter folder",
    )
    lora.add_argument(
        "--lora-alpha", type=float, default=16.0, metavar="A",
        help="the update is scaled by A / R (default: 16)",
    )  # fmt: skip
    lora.add_argument(
        "--lora-target-modules", metavar="NAMES",
        help="comma-separated layer names to adapt, e.g. c_attn,c_proj (default: c_attn)",
    )  # fmt: skip
    lora.add_argument(
        "--lora-dropout", type=common.fraction, default=0.0, metavar="P",
        help="dropout on the adapters' input (default: 0)",
    )  # fmt: skip
    lora.add_argument(
        "--lora-bias", choices=("none", "all", "lora_only"), default="none",
        help="which biases train too: none, all, or the adapted layers' (default: none)",
    )  # fmt: skip
    lora.add_argument(
        "--merge", action="store_true",
        help="also write the model with the adapter merged in, to OUTPUT_DIR/merged",
    )  # fmt: skip
    common.add_training_args(parser, DEFAULTS)
    parser.set_defaults(run=run)


def _lora_config(args: argparse.Namespace) -> Any:
    from numpyllm.peft import LoraConfig

    targets = None
    if args.lora_target_modules is not None:
        targets = [t.strip() for t in args.lora_target_modules.split(",") if t.strip()]
        if not targets:
            raise common.UsageError("--lora-target-modules names no layer")
    try:
        return LoraConfig(
            r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
            target_modules=targets, bias=args.lora_bias,
            base_model_name_or_path=str(args.checkpoint),
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise common.UsageError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from numpyllm.trainer import Trainer

    model, tokenizer, folder = common.load_for_inference(args.checkpoint, args.tokenizer)
    context = model.config.max_seq_len
    seq_len = args.seq_len or context
    if seq_len > context:
        raise common.UsageError(f"--seq-len {seq_len} exceeds the model's context of {context}")
    if seq_len < 2:
        raise common.UsageError("--seq-len must be >= 2 (an input and a target)")
    lora = args.lora_r is not None
    if not lora and args.merge:
        raise common.UsageError("--merge needs --lora-r: only an adapter can be merged")
    if args.output_dir is None:
        suffix = "-lora" if lora else "-finetuned"
        args.output_dir = str(common.default_output_dir(folder, args.checkpoint, suffix))
    if args.dropout is not None:
        model = common.with_dropout(model, args.dropout)
    adapter_dir = Path(args.output_dir)
    peft_model = None
    if lora:
        from numpyllm.peft import get_peft_model

        try:
            peft_model = get_peft_model(model, _lora_config(args))
        except ValueError as exc:
            raise common.UsageError(str(exc)) from None
        args.output_dir = str(adapter_dir / "training")  # the Trainer's resumable checkpoints
        resume = args.resume_from_checkpoint
        if resume not in (None, True) and Path(resume).resolve() == adapter_dir.resolve():
            args.resume_from_checkpoint = args.output_dir  # the adapter folder names its run
    common.training_arguments(args, seq_len=seq_len)  # checks the flags before any slow work
    if common.memory_check(model, args, seq_len):
        return 0  # --dry-run: the report is all
    if launched_rank() == 0:  # under mpiexec, rank 0 alone touches the files
        common.check_output_dir(
            Path(args.output_dir), args.resume_from_checkpoint, args.overwrite_output_dir
        )

    corpus, source = common.load_corpus(args.data)
    dataset = common.token_dataset(corpus, tokenizer, args)
    if len(dataset.val) < 2:
        raise common.UsageError(
            f"{source} gives only {len(dataset.val)} validation token(s) at --val-fraction "
            f"{args.val_fraction}: use more text or a larger --val-fraction"
        )
    if len(dataset.train) < seq_len:
        raise ValueError(
            f"{source} gives {len(dataset.train)} training tokens, fewer than one row of "
            f"--seq-len {seq_len}: use more text or a smaller --seq-len"
        )
    print(f"checkpoint  {folder}: {model.num_parameters():,} parameters, context {context}")
    print(f"data        {source}: {dataset.n_chars:,} characters")
    print(f"tokens      {len(dataset.train):,} train / {len(dataset.val):,} validation")
    if peft_model is not None:
        trainable, total = peft_model.num_trainable_parameters()
        config = peft_model.peft_config
        print(
            f"LoRA        r={config.r}, alpha={config.lora_alpha:g} on "
            f"{len(peft_model.lora_layers())} layers ({', '.join(config.target_modules)}): "
            f"trainable params {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
        )

    targs = common.training_arguments(
        args, common.total_steps(args, dataset, seq_len), seq_len=seq_len
    )
    batch = targs.per_device_train_batch_size
    before, count, _ = evaluate_tokens(model, dataset, "val", seq_len, batch)
    print(f"before      validation loss {common.fmt_loss(before)} on {count:,} tokens")
    model.train()
    trained = model if peft_model is None else peft_model  # a LoRA run checkpoints its adapter
    trainer = Trainer(trained, targs, train_dataset=dataset, tokenizer=tokenizer)
    common.print_ranks(trainer.world, batch)
    print(
        f"training    {trainer.total_steps:,} steps x {batch} rows x {seq_len} tokens, "
        f"AdamW lr {targs.learning_rate:g} -> {targs.output_dir}"
    )
    metrics = trainer.train()
    if trainer.world.rank != 0:
        return 0  # the evaluation and the saved adapter are rank 0's
    if metrics.get("interrupted"):
        common.info(
            f"numpyllm: fine-tuning interrupted at step {metrics['global_step']}; checkpoint "
            f"saved to {metrics['checkpoint']}"
        )
        return 130
    if peft_model is None:  # the run folder itself: the final model, as transformers loads it
        trainer.save_model()
    after, count, _ = evaluate_tokens(model, dataset, "val", seq_len, batch)
    print(f"before      validation loss {common.fmt_loss(before)}")
    print(f"after       validation loss {common.fmt_loss(after)}")
    if peft_model is not None:
        return _save_adapter(peft_model, adapter_dir, folder, tokenizer, args.merge)
    where = shlex.quote(str(Path(targs.output_dir)))
    print(
        f"Saved to {metrics['checkpoint']}. Next: numpyllm generate {where} --prompt '...'"
        f"   |   numpyllm chat {where}"
    )
    return 0


def _save_adapter(
    peft_model: Any, adapter_dir: Path, base: Path, tokenizer: Any, merge: bool
) -> int:
    """The adapter folder is the result: the Trainer's checkpoints (each an adapter with its
    optimizer and trainer state) are dropped once it is written (they stay only when training
    was interrupted, for --resume-from-checkpoint)."""
    import shutil

    from numpyllm.checkpoint import save_checkpoint

    peft_model.save_pretrained(adapter_dir)
    shutil.rmtree(adapter_dir / "training", ignore_errors=True)
    base_q, adapter_q = shlex.quote(str(base)), shlex.quote(str(adapter_dir))
    print(f"Saved the adapter to {adapter_dir}.")
    if merge:
        merged_dir = adapter_dir / "merged"
        save_checkpoint(merged_dir, peft_model.merge_and_unload(), tokenizer=tokenizer)
        print(f"Saved the merged model to {merged_dir}.")
    print(f"Next: numpyllm generate {base_q} --adapter {adapter_q} --prompt '...'")
    return 0
