"""Synthetic corpus benchmarks: generation speed and finding visibility."""
