"""Errors that the command line turns into one `Error: ...` line and an exit code.

Exit codes (documented in the README):
  2  usage error: bad flag values, bad config keys or types, unknown names
  3  input-data error: missing or corrupt files, mismatched caches or decisions
  4  solver error: no solver available, solver failed or hit its limit without a solution
  5  environment error: device not available, directory not writable
"""
from __future__ import annotations


class CladoError(Exception):
    """Base for every error clado reports to a user. The message is one line.

    `params`: the library parameters the message names (e.g. "sb"); the command line shows
    them as the flags that set them (--sb), so library messages never name flags."""

    exit_code = 1

    def __init__(self, message: str, params: tuple = ()):
        super().__init__(" ".join(str(message).split()))
        self.params = tuple(params)

    def for_flags(self, flag_of) -> str:
        """The message with each named parameter written as its flag (`flag_of(name)`)."""
        import re

        text = str(self)
        for p in self.params:
            text = re.sub(rf"(?<![\w.-]){re.escape(p)}(?![\w-])", flag_of(p), text)
        return text


class UsageError(CladoError):
    exit_code = 2


class ConfigError(UsageError):
    pass


class InputError(CladoError):
    exit_code = 3


class CacheError(InputError):
    pass


class SolverError(CladoError):
    exit_code = 4


class EnvironmentProblem(CladoError):
    exit_code = 5
