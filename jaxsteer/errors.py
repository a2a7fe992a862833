"""The base class of the errors jaxsteer raises on purpose.

Every such error (`ConfigError`, `DatasetError`, `CheckpointError`, `RunLockedError`,
`NonFiniteError`, `GGUFError`, `UnsupportedConfigError`) derives from `JaxsteerError` as well
as from the builtin it has always been (ValueError or RuntimeError), so `except ValueError` code
keeps working and the CLI prints any of them as one line naming the culprit.
"""

from __future__ import annotations


class JaxsteerError(Exception):
    """An error whose message names the culprit and what to do; the CLI prints it as one line."""


__all__ = ["JaxsteerError"]
