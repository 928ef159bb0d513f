"""Conversion of Hugging Face WildGuard checkpoints (imported as `wildguard_lite.convert`).

The folder sits at the repository's top level; setuptools installs it as
`wildguard_lite.convert`, and from a checkout `wildguard_lite/__init__.py` adds it to the package
path, so imports are absolute (`from wildguard_lite.errors import ...`) and read the same both ways.

Heavy dependencies (gguf, llama_cpp, torch, transformers) are imported inside functions.
"""
