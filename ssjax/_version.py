"""The package version (read by the shells without importing the package itself)."""

__version__ = "0.1.0"
