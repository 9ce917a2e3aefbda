"""The error a user can fix: a wrong config value, a missing file or model, a device that is not there.

``mstar`` reports a :class:`UserError` (and the ``ValueError`` / ``OSError`` family: a missing path, a
read-only run directory, a full disk) as one line on stderr with a non-zero exit, not a traceback.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """A problem with the user's input or environment; the message says what was wrong and where, and
    how to fix it. A ``ValueError``, so code that catches those keeps working."""
