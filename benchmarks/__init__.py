"""numpyllm vs PyTorch on this machine, same run, same threads: ``python -m benchmarks``."""
