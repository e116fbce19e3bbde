"""Benchmark and evaluation runners (StreamingBench, OVO-Bench, VQA, speed, fidelity)."""
