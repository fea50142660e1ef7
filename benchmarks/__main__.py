"""python -m benchmarks [--quick] [--threads N] [--only SECTION] [--rounds R]

SECTION: ops, train, demo, generate, memory, load, llama, long or mpi.

Prints a Markdown table of numpyllm against PyTorch eager (and transformers' generate) and
writes the JSON to benchmarks/results/. torch is optional: without it only numpyllm's columns
are filled.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

SECTIONS = ("ops", "train", "demo", "generate", "memory", "load", "llama", "long", "mpi")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a couple of steps (CI)")
    parser.add_argument("--threads", type=int, default=2, help="threads for BLAS, torch, ufuncs")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only this section")
    parser.add_argument("--configs", default=None, help="comma-separated: tiny,small,medium")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per row")
    parser.add_argument("--json", default=None, help="where to write the JSON results")
    args = parser.parse_args(argv)

    from benchmarks import common, report

    limits = common.limit_threads(args.threads)
    # --quick (CI's smoke run) leaves out the Llama rows: transformers' model building alone
    # takes longer than the rest; `--quick --only llama` runs them.
    sections = args.only or [s for s in SECTIONS if not (args.quick and s == "llama")]
    rounds = args.rounds or (2 if args.quick else 7)
    configs = common.QUICK_CONFIGS if args.quick else common.CONFIGS
    if args.configs and not args.quick:
        configs = {name: common.CONFIGS[name] for name in args.configs.split(",")}

    cpu = common.cpu_info()
    kernels = common.blas_kernels(limits)
    meta = {
        "argv": sys.argv,
        "python": platform.python_version(),
        "machine": common.describe_machine(cpu, kernels),
        "cpu": cpu,
        "blas_kernel": kernels,
        "cpus": os.cpu_count(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
        "rounds": rounds,
        **{k: v for k, v in limits.items() if not k.startswith("_")},
    }
    n = 256 if args.quick else 1024
    meta["sgemm_peak_gflops"] = common.sgemm_peak(args.threads, n=n)
    meta["sgemm_peak_gflops_one_thread"] = common.sgemm_peak(1, n=n)
    print(
        f"# numpyllm benchmarks on {meta['machine']}\n"
        f"# threads={args.threads}  sgemm peak {meta['sgemm_peak_gflops']:.0f} GFLOP/s "
        f"({meta['sgemm_peak_gflops_one_thread']:.0f} on one thread)  numpy {np.__version__}"
        f"  torch {meta.get('torch', 'not installed')}",
        flush=True,
    )

    rows: list = []
    start = time.perf_counter()
    for section in sections:
        if section == "ops":
            from benchmarks import ops

            rows += ops.run(args.quick, rounds, args.threads)
        elif section == "train":
            from benchmarks import train

            peaks = (meta["sgemm_peak_gflops"], meta["sgemm_peak_gflops_one_thread"])
            rows += train.run(configs, args.threads, rounds, peaks, 0.01 if args.quick else 0.25)
        elif section == "demo":
            from benchmarks import demo

            rows += demo.run(args.quick, min(rounds, 3), args.threads)
        elif section == "generate":
            from benchmarks import generate

            if args.quick:
                rows += generate.run(configs, rounds, prompt_len=4, new_tokens=8)
            else:
                rows += generate.run(configs, rounds)
        elif section == "memory":
            from benchmarks import memory

            rows += memory.run(configs, args.threads, steps=1 if args.quick else 2)
        elif section == "load":
            from benchmarks import generate, load

            if args.quick:  # numpyllm alone, one round: seconds
                rows += load.run(common.QUICK_CONFIGS["quick"], 1, args.threads, quick=True)
            else:  # a GPT-2-124M-sized checkpoint: loading, then generating
                rows += load.run(load.GPT2_124M, min(rounds, 5), args.threads)
                gpt2 = {"gpt2-124m": load.GPT2_124M}
                rows += generate.run(gpt2, min(rounds, 3), prompt_len=16, new_tokens=64)
        elif section == "llama":
            from benchmarks import llama

            rows += llama.run(configs, args.threads, rounds, args.quick)
        elif section == "long":
            if args.quick:  # minutes per row: never part of the quick run
                continue
            from benchmarks import long_context

            rows += long_context.run(args.threads, min(rounds, 3))
        elif section == "mpi":
            if args.quick:  # process launches: never part of the quick run
                continue
            from benchmarks import distributed

            mpi_configs = {k: v for k, v in configs.items() if k != "tiny"}
            rows += distributed.run(mpi_configs, min(rounds, 3))
        print(
            f"  {section} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True
        )

    report.add_ratios(rows)
    print()
    print(report.table(rows))
    here = os.path.dirname(os.path.abspath(__file__))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.json or os.path.join(
        here, "results", f"{'quick' if args.quick else 'full'}-{stamp}.json"
    )
    report.write_json(path, meta, rows)
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
