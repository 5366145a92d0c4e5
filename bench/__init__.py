"""Benchmarks: `make bench` (python -m bench [case ...]). Each case times ours against a baseline in the same run."""
