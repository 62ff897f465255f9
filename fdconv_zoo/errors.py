"""The package's errors of bad input: what a user can fix, so the command line shows the message, not a traceback.

Every subcommand of ``fdconv-zoo`` (and ``hub_scripts/publish.py``) turns an :class:`InputError` into one line on
stderr and exit status 2; any other exception is a bug and keeps its traceback. The subclasses are also the
built-in error a Python caller expects (``FileExistsError``, ``FileNotFoundError``, ``ImportError``).
This module imports nothing, so any layer of the package may raise these.
"""

from __future__ import annotations

__all__ = ["InputError", "MissingExtraError", "MissingInputError", "OutputExistsError"]


class InputError(ValueError):
    """Bad input (a name, a number, a file, a folder, a dataset): the message says what is wrong and the fix."""


class MissingInputError(InputError, FileNotFoundError):
    """An input file or folder (a checkpoint, a dataset folder) does not exist."""


class OutputExistsError(InputError, FileExistsError):
    """The output already exists and replacing it was not asked for (``--overwrite``)."""


class MissingExtraError(InputError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""
