"""Benchmarks (`make bench`): convert vs a plain-copy floor, forward pass vs torch, verify."""
