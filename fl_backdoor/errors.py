"""The errors that reach the user as one line (the command-line tools catch UserError)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (config, data, checkpoint): reported as one line, no traceback."""


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message names the key."""
