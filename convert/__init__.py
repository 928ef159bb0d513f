"""Conversion of Hugging Face WildGuard checkpoints (imported as `wildguard_lite.convert`).

The folder sits at the repository's top level; setuptools maps it to `wildguard_lite.convert`
(`package-dir` in pyproject.toml), in a normal and in an editable install alike (develop with
`pip install -e .`, see CONTRIBUTING.md). Imports are absolute (`from wildguard_lite.errors import ...`).

Heavy dependencies (gguf, llama_cpp, torch, transformers) are imported inside functions.
"""
