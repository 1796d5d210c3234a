"""The one error type users see: a one-line message, exit code 2 from the CLI."""


class PkdError(Exception):
    """Bad input or an impossible request; the message names the file/line or option."""
