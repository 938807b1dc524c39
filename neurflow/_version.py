"""The package version, in one place (imported by the package and the CLI without cycles)."""

__version__ = "0.1.0"
