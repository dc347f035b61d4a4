"""User-facing error types: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input (file, row, key) that a person can fix.

    The message must name the file, row or key at fault. The CLI prints it on one line, with no
    traceback, and exits with code 2.
    """

    exit_code = 2


class ImageReadError(UserError):
    """An image file that cannot be decoded; the message names the file and the reason."""


class DiskFullError(UserError):
    """An output that did not fit: the disk (ENOSPC) or the quota (EDQUOT) is full; the message names the output."""
