"""Evaluation: av-benchmark metrics from feature caches, the av_bench adapter, generation for Evaluate (see README.md)."""
