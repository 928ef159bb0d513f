"""The benchmarks, one module each (`add_arguments`, `run`), run as `wildguard-lite bench NAME`
(wildguard_lite/cli/bench.py). Installed as `wildguard_lite.benchmarks` (`package-dir` in
pyproject.toml). Heavy imports stay inside functions: `bench --help` imports every module.
"""
