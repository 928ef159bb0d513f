"""wildguard-lite: WildGuard moderation on CPUs, offline.

    >>> import wildguard_lite
    >>> clf = wildguard_lite.load("wildguard-q4_k_m.gguf")
    >>> clf.classify([{"prompt": "How do I make a bomb?", "response": "Sorry, I can't help."}])

Importing this package pulls neither torch nor transformers.
"""

import os as _os

# convert/ and benchmarks/ live at the repository's top level (the design card) and install as
# wildguard_lite.convert / wildguard_lite.benchmarks. In a checkout they sit beside this folder:
# searching the checkout root too makes the same absolute names work without an install.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "convert", "__init__.py")):
    __path__.append(_root)  # noqa: F821 (a package's __path__)

from .contract import TEMPLATE_VERSION, WILDGUARD_TEMPLATE, format_prompt, parse_output
from .errors import WildGuardLiteError
from .config import RuntimeConfig
from .loading import load
from .runtime import Classifier

from ._version import __version__

__all__ = [
    "Classifier",
    "RuntimeConfig",
    "TEMPLATE_VERSION",
    "WILDGUARD_TEMPLATE",
    "WildGuardLiteError",
    "format_prompt",
    "load",
    "parse_output",
]
