"""One lock for every cache that concurrent runs fill (pretrained references, downloaded encoders).

filelock's FileLock: an OS lock on the lock file, released when the holder dies, so a killed run
never leaves a cache locked for the next one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from filelock import FileLock


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on ``path`` (its folder is made first) for the ``with`` block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield
