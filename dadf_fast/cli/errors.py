"""The CLI's error kinds: what a command prints as one line with exit status 2."""

EXPECTED_ERRORS = (ValueError, FileNotFoundError, FileExistsError, TypeError, KeyError, RuntimeError, OSError)


class UserError(Exception):
    """An error in what the user asked for: printed as one line, exit code 2."""
