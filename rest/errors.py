"""The one exception type users are meant to read.

A `RestError` is bad input, not a bug: the CLI prints its message (which names the file, column or config key
and the fix) and exits with code 2, without a traceback. Anything else is a bug and keeps its traceback.
"""

import errno


class RestError(Exception):
    """Bad input that the user can fix; the message says where and how."""


# OS errors a user can fix (a full or read-only disk, a bad --run path), and how: the CLI prints one line with the
# fix instead of a traceback, and the flows log them without one.
OS_ERROR_FIXES = {
    errno.ENOSPC: "free some space and run the same command again (published artifacts are kept; the step that "
    "failed starts over, and nothing it half-wrote looks finished)",
    errno.EDQUOT: "free some space (disk quota) and run the same command again",
    errno.EROFS: "the file system is read-only: give a --run directory on a writable one",
    errno.EACCES: "no permission to write there: give a --run directory you can write to",
    errno.EPERM: "no permission to write there: give a --run directory you can write to",
    errno.ENOTDIR: "a part of that path is a file, not a directory: give another --run path",
    errno.EEXIST: "a file is in the way of a directory there: give another --run path",
}
