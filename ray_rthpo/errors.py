"""Errors that mean "the user asked for something wrong" (exit status 2 on the CLI).

Every message says what was wrong, the value, and how to fix it, on one line.
"""

from __future__ import annotations


class RTHPOError(Exception):
    """Base class of every error ray_rthpo raises on purpose."""


class ConfigError(RTHPOError, ValueError):
    """A configuration value is unknown, of the wrong type, or out of range."""


class DataError(RTHPOError, OSError):
    """A dataset could not be found or read (missing folder, truncated file, ...)."""
