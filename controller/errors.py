"""The controller's errors::

ControllerError
└── KeyStoreError        the key directory is missing, incomplete or already used
"""

from __future__ import annotations

__all__ = ["ControllerError", "KeyStoreError"]


class ControllerError(Exception):
    """Root of every error raised by the controller package."""


class KeyStoreError(ControllerError):
    """The key directory cannot be used as asked."""
