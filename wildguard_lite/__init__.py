"""wildguard-lite: WildGuard moderation on CPUs, offline.

    >>> import wildguard_lite
    >>> clf = wildguard_lite.load("wildguard-q4_k_m.gguf")
    >>> clf.classify([{"prompt": "How do I make a bomb?", "response": "Sorry, I can't help."}])

Importing this package pulls neither torch nor transformers.
"""

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
    "__version__",
    "format_prompt",
    "load",
    "parse_output",
]
