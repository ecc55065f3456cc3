"""Putting a finished file in place without ever replacing one that appeared there meanwhile."""
from __future__ import annotations

import errno
import os
from pathlib import Path

# link() errors that mean "this file system has no hard links" (FAT, some network shares)
_NO_HARD_LINKS = (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK, errno.EOPNOTSUPP)


def move_no_overwrite(src: str | os.PathLike, dst: str | os.PathLike) -> bool:
    """Move `src` to `dst` unless something (a file, a link, even a dangling one) is at `dst`.

    Returns True when moved; False, with `src` left where it is, when `dst` exists. A hard link
    makes the check and the move one atomic step; where the file system has none, it is a check
    then a rename, and a file appearing between the two is replaced (the only window left).
    """
    src, dst = Path(src), Path(dst)
    try:
        os.link(src, dst)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(dst):
            return False
        os.replace(src, dst)
        return True
    src.unlink()
    return True
