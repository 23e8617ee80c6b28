"""A faithful port of the article's model and training loop, defects included and marked `DEFECT`.
Reference material for the benchmarks (bench/quality.py, bench/train_throughput.py), not part of tinyveo."""
