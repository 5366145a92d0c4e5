"""Errors that the command line turns into a one-line message and an exit code."""


class HparrError(Exception):
    """A runtime failure the user can act on (exit code 1)."""

    exit_code = 1


class UsageError(HparrError):
    """A bad flag or argument value (exit code 2)."""

    exit_code = 2


def first_line(exc: BaseException, limit: int | None = 200) -> str:
    """The first line of an exception's message (its type name when it has none), at most `limit` characters
    (None: the whole line)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
