"""How many CPUs this process may use: asked once by an entry point, then passed down.

``os.cpu_count()`` counts the machine's cores, not the ones a SLURM job or a container (cgroup
cpuset, ``taskset``) gave this process; sizing threads or DataLoader workers from it
oversubscribes shared nodes. Library functions take a CPU count as an argument instead of
calling this, so a test or a caller decides.
"""

from __future__ import annotations

import os


def available_cpus(environ: dict | None = None) -> int:
    """``SLURM_CPUS_PER_TASK`` when set (and a positive integer), else the CPUs this process is
    allowed to run on (``os.sched_getaffinity``), else ``os.cpu_count()``; at least 1."""
    env = os.environ if environ is None else environ
    slurm = str(env.get("SLURM_CPUS_PER_TASK", "")).strip()
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS / Windows have no affinity call
        return max(1, os.cpu_count() or 1)
