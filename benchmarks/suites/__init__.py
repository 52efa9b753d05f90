"""The suites, in report order. Each module has ``NAME``, ``TITLE``,
``space_needed(sizes) -> bytes`` (the most it keeps on the work
directory's filesystem at once) and ``run(ctx, result)``."""

from __future__ import annotations

import dataclasses

from benchmarks import env, floors
from benchmarks.suites import (cache_scan, cold_parallel, disk_bytes,
                               memory, migration, nova_driver, reflink,
                               spawn_cached)

SUITES = {m.NAME: m for m in (spawn_cached, cold_parallel, disk_bytes,
                              reflink, migration, cache_scan, memory,
                              nova_driver)}


@dataclasses.dataclass
class Context:
    """What a suite runs with."""

    sizes: env.Sizes
    reps: int
    warmup: int
    quick: bool
    dir: str            # the suite's own directory (removed afterwards)
    # The backends' environments (a volume group, a Ceph cluster), shared
    # by the run's suites.
    envs: floors.Environments
