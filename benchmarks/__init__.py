"""Benchmarks for jaxsteer (run as modules, e.g. `python -m benchmarks.inference`)."""
