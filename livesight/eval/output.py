"""An output folder (eval's and every bench's --out), checked before any work starts: a run that
cannot save must fail in its first second, not after hours of computing."""

import os
import tempfile

from livesight.errors import InputError


def writable_folder(path: str, flag: str = "--out") -> str:
    """Create `path` if missing and prove it writable (a file made and removed in it) -> path.
    InputError naming the flag, the path and the fix otherwise."""
    fix = "give a folder you can write (it is created if missing)"
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{flag} {path} is a file, not a folder: {fix}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:  # a parent that is a file, a read-only file system, no permission
        raise InputError(f"{flag} {path}: cannot create the folder ({err.strerror or err}): {fix}") from None
    try:
        handle, probe = tempfile.mkstemp(prefix=".livesight-write-check-", dir=path)
        os.close(handle)
        os.remove(probe)
    except OSError as err:
        raise InputError(f"{flag} {path} is not writable ({err.strerror or err}): {fix}, or change its "
                         f"permissions") from None
    return path
