"""User-facing errors.

Anything a user can cause (a bad file, a wrong flag, a mismatched artifact) raises a
`PromptTuneError` whose message is one line naming the problem and where it is. The CLI prints
that line and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations


class PromptTuneError(Exception):
    """A problem with the user's input, explained in one line."""


class ConfigError(PromptTuneError):
    """A bad flag, hyper-parameter or task/grid file."""


class DataError(PromptTuneError):
    """A data file that is missing, malformed or does not fit the task."""


class ModelError(PromptTuneError):
    """A model that cannot be found, loaded or used as asked."""


class ArtifactError(PromptTuneError):
    """A prompt artifact that is missing, malformed or made for another backbone."""
