"""The version, read once from the installed package's metadata (pyproject.toml is the source)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wildguard-lite")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"
