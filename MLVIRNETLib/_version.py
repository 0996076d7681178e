"""The library's version (its own module: read by pyproject.toml and by modules that record it,
without importing the package's public API)."""

__version__ = "0.1.0"
