"""The --base references that the jobs of one `wdiv.analyze --executor` command share.

Several chunks may hold runs of one reference. The first job to need it analyses it under its
lock (wdiv.locks, one per reference) and keeps its Outcome in the command's jobs folder; the jobs
that waited on the lock read it from there, so a reference is analysed once per command, not once
per chunk. A file that cannot be read back whole (a damaged disk, a hand edit: writes are atomic)
is analysed again and replaced. Only a reference that was analysed is kept: one that failed
(perhaps on that node only: no GPU, out of memory) is tried again by the next job that needs it.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path
from typing import Callable

from wdiv.analysis_outputs import Outcome
from wdiv.io import atomic_write, sha256_json
from wdiv.locks import locked

log = logging.getLogger("wdiv.analyze")

MAGIC = b"wdiv reference outcome 1\n"  # then the payload's sha256 (hex) and a newline, then the pickle


def reference_key(ref: Path, sha: str, opts, save_esd: bool, hash_weights: bool) -> str:
    """What a reference's Outcome depends on: its bytes (sha256), the options of the outputs'
    fingerprint, the device (a GPU's eigenvalues may differ in the last bits), what is kept
    (eigenvalues, layer hashes) and its path (its error lines name it). --jobs-folder may be
    given again to a command with other options: the key tells their outcomes apart."""
    return sha256_json({"sha256": sha, "path": str(ref), "options": opts.fingerprint(), "device": opts.device,
                        "save_esd": bool(save_esd), "hash_weights": bool(hash_weights)})


def _dump(outcome: Outcome) -> bytes:
    payload = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def _load(path: Path) -> tuple[Outcome | None, str | None]:
    """(the kept Outcome, None), (None, None) if there is none, or (None, why it is unusable)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    head, _, payload = data[len(MAGIC):].partition(b"\n")
    if not data.startswith(MAGIC) or head.decode(errors="replace") != hashlib.sha256(payload).hexdigest():
        return None, "damaged (its hash does not match)"
    try:
        outcome = pickle.loads(payload)
    except Exception as exc:  # a file of another wdiv: whatever unpickling raises, it is analysed again
        return None, f"unreadable ({type(exc).__name__}: {exc})"
    if not isinstance(outcome, Outcome) or outcome.df is None:
        return None, "not a reference's analysis"
    return outcome, None


def shared_reference(folder: Path, ref: Path, sha: str, opts, save_esd: bool, hash_weights: bool,
                     analyse: Callable[[], Outcome]) -> Outcome:
    """The reference's Outcome: read from ``folder`` if a job kept it, else ``analyse()`` (under
    the reference's lock, so that concurrent jobs wait for it rather than analyse it too) and kept."""
    path = Path(folder) / f"{reference_key(ref, sha, opts, save_esd, hash_weights)}.pkl"
    with locked(path.with_suffix(".lock")):
        outcome, why = _load(path)
        if outcome is not None:
            log.info("reference %s: read from %s (analysed by another job of this command)", ref, path)
            return outcome
        if why is not None:
            log.warning("%s: %s: the reference %s is analysed again", path, why, ref)
        outcome = analyse()
        if outcome.df is None:
            log.info("reference %s: analysed, failed (not kept: the next job tries it again)", ref)
            return outcome
        try:
            data = _dump(outcome)
            atomic_write(path, lambda tmp: tmp.write_bytes(data))
        except OSError as exc:  # the outcome is in hand: only the other jobs lose it
            log.warning("%s: not written (%s): the other jobs analyse the reference %s again", path, exc, ref)
        else:
            log.info("reference %s: analysed, kept in %s", ref, path)
    return outcome
