"""User-facing error type: the CLI prints it as one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input (file, row, key) that a person can fix.

    The message must name the file, row or key at fault. The CLI prints it on one line, with no
    traceback, and exits with code 2.
    """

    exit_code = 2
