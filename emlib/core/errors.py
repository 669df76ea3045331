"""Errors a user can act on: the CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations

__all__ = ["UserError", "ParamError", "DatasetError", "SecretLeakError"]


class UserError(ValueError):
    """Bad input or set-up: the message says what, where and what to do."""


class ParamError(UserError):
    """A parameter has an unknown name, a wrong type or a value out of its range."""


class DatasetError(UserError):
    """A dataset, question or answer file is missing, unreachable or malformed."""


class SecretLeakError(UserError):
    """Something that looks like a credential was about to be written (or was found) in an output."""
