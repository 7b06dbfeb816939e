"""User-facing errors: the CLI prints their message on one line and exits with code 2, no traceback."""


class UserError(Exception):
    """A mistake in what the user asked for or gave us (bad flag, bad file), not a bug in tvmquant."""
