"""The toy WildGuard: a tiny Mistral-architecture model trained locally (about 10 minutes on 2
idle cores, then cached) on a synthetic WildGuard-format dataset, with the real template,
answer format and tokenizer conventions. It stands in for the 7B weights in tests, the demo and benchmarks.

    data.py   the synthetic rows and their adversarial augmentation (standard library only)
    train.py  SentencePiece tokenizer, model config, training loop, evaluation helpers
    build.py  build_toy / ensure_toy / provide_toy: a complete, cached Hugging Face folder;
              build_tokenizer: its tokenizer alone, in seconds

torch, transformers and sentencepiece are imported inside functions: importing this package
(or `wildguard_lite`) stays light.
"""

from wildguard_lite.toy.build import TOY_VERSION, build_tokenizer, build_toy, ensure_toy, provide_toy, toy_cache_dir

__all__ = ["TOY_VERSION", "build_tokenizer", "build_toy", "ensure_toy", "provide_toy", "toy_cache_dir"]
