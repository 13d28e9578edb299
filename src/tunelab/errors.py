"""The one exception type that reaches users as a single line and exit code 2."""


class UserError(Exception):
    """Bad input: a missing file, an unknown name, a value out of range.

    The CLI prints ``error: <message>`` on one line and exits with code 2; no traceback.
    The message must say what is wrong and what would be right.
    """
