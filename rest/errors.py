"""The one exception type users are meant to read.

A `RestError` is bad input, not a bug: the CLI prints its message (which names the file, column or config key
and the fix) and exits with code 2, without a traceback. Anything else is a bug and keeps its traceback.
"""


class RestError(Exception):
    """Bad input that the user can fix; the message says where and how."""
