"""The base class of the errors jaxsteer raises on purpose.

Every such error derives from `JaxsteerError` as well as from the builtin it has always been
(ValueError, RuntimeError or FileNotFoundError), so `except ValueError` code keeps working and
the command line prints any of them as one line naming the culprit:

- `InputError` (a ValueError): a value given to jaxsteer (an argument, a flag, a file's contents)
  is unusable; the message names it.
- `NotFoundError` (a FileNotFoundError): a path jaxsteer was pointed at is absent or is not what
  it should be (a directory without its config, a model without its files).
- Specific ones, defined beside the code that raises them: `ConfigError`, `DatasetError`,
  `GGUFError`, `UnsupportedConfigError` (ValueErrors); `CheckpointError`, `RunLockedError`,
  `NonFiniteError` (RuntimeErrors).
"""

from __future__ import annotations


class JaxsteerError(Exception):
    """An error whose message names the culprit and what to do; the CLI prints it as one line."""


class InputError(JaxsteerError, ValueError):
    """A value given to jaxsteer (an argument, a flag, a file's contents) is unusable."""


class NotFoundError(JaxsteerError, FileNotFoundError):
    """A path jaxsteer was pointed at is absent, or is not what it should be."""


__all__ = ["JaxsteerError", "InputError", "NotFoundError"]
