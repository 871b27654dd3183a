"""The one root of user mistakes: run_cli prints any UserError as one line (exit code 2), no traceback.

This module imports nothing of the project, so every module can raise these without an import circle.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad path, bad flag, unreadable file): printed as one line, no traceback."""


class ConfigError(UserError, ValueError):
    """A TrainConfig that cannot be loaded: an unknown key, a wrong type, a value out of range.

    Also a ValueError, as it has always been (callers that catch ValueError around a config still do)."""
