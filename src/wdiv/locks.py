"""One lock for every cache that concurrent runs fill (pretrained references, downloaded encoders).

filelock's FileLock: an OS lock (``flock``) on the lock file, released when the holder dies, so a
killed run never leaves a cache locked for the next one. Some shared filesystems (older NFS,
some Lustre or object-store mounts) have no ``flock``: there a soft lock is used instead
(filelock's SoftFileLock: the lock file's existence is the lock), chosen automatically when
the OS lock is refused (recent filelock versions switch by themselves, older ones raise and are
switched here), or always with ``WDIV_LOCK=soft``. A soft lock is left behind by a
holder that was killed (``kill -9``, a node failure): the waiting run names the file to delete.
The soft lock has its own file (``<lock>.soft``), since an OS lock leaves its file behind; jobs
that share a cache should use one kind (set ``WDIV_LOCK`` alike), as the two kinds do not
exclude each other.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from filelock import FileLock, SoftFileLock, Timeout

log = logging.getLogger(__name__)

SOFT_WAIT_S = 6 * 3600.0  # a soft lock held longer than this is taken to be stale (named, not broken)


def soft_locks_forced() -> bool:
    return os.environ.get("WDIV_LOCK", "").strip().lower() == "soft"


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on ``path`` (its folder is made first) for the ``with`` block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not soft_locks_forced():
        lock = FileLock(str(path))
        try:
            lock.acquire()
        except NotImplementedError:  # filelock: this filesystem has no flock
            log.warning("%s: the filesystem refuses OS file locks; using a soft lock (WDIV_LOCK=soft)", path)
        else:
            try:
                yield
            finally:
                lock.release()
            return
    # its own file: an OS lock leaves its (unlocked) file behind, which a soft lock would take as held
    soft = SoftFileLock(str(path) + ".soft", timeout=SOFT_WAIT_S)
    try:
        soft.acquire()
    except Timeout:
        raise TimeoutError(f"{path}.soft: soft lock held for over {SOFT_WAIT_S / 3600:.0f} h; if no run is building this cache entry, delete the file") from None
    try:
        yield
    finally:
        soft.release()
