"""Errors that the command line turns into a one-line message and an exit code."""


class HparrError(Exception):
    """A runtime failure the user can act on (exit code 1)."""

    exit_code = 1


class UsageError(HparrError):
    """A bad flag or argument value (exit code 2)."""

    exit_code = 2
