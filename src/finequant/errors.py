"""finequant's own exception types: each message says what went wrong and how to fix it."""

from __future__ import annotations


class FinequantError(Exception):
    """Base class of every error finequant raises on purpose."""


class SpecError(FinequantError, ValueError):
    """A model or data spec string (``timm:resnet18``, ``imagefolder:PATH``) cannot be resolved."""


class ModelError(FinequantError):
    """A model cannot be built, loaded or adapted (head, weights, input size)."""


class DataError(FinequantError):
    """A data set is unreadable or unusable (empty class, bad file, missing column)."""


class ConfigError(FinequantError, ValueError):
    """A configuration value is invalid; the message names the key and the allowed values."""


class UntrustedFileError(FinequantError):
    """A file would need arbitrary code to load and the user did not allow it."""
