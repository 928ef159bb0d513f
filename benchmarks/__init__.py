"""Benchmarks of accuracy and speed against the reference (imported as `wildguard_lite.benchmarks`;
laid out like `convert/`, see its docstring).

Driven by `wildguard-lite bench`; heavy imports stay inside functions.
"""
