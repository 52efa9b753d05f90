"""A volume group for the Lvm benchmarks, from tests/functional/lvm_env.py.

:class:`tests.functional.lvm_env.LvmEnv` as a context manager: a VG on a
sparse file behind a loop device, LVM with ``activation = 0`` and every
LV's device a loop device at ``/dev/<vg>/<lv>`` (made by the wrapped
``lvcreate`` / ``lvremove`` on ``PATH``). While it is open, this process's
environment holds the LvmEnv's ``PATH``, ``LVM_SYSTEM_DIR`` and
``LVM_SUPPRESS_FD_WARNINGS`` (the library and the floor's bare commands
both inherit them); on exit every LV, the VG, the PV and every loop device
are removed and the environment restored, also on errors.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from tests.functional.lvm_env import LvmEnv


@contextlib.contextmanager
def volume_group(root: str, size: int) -> Iterator[tuple[LvmEnv, str]]:
    """(the environment, a new VG of ``size`` bytes) under ``root``."""
    os.makedirs(root)
    lvm = LvmEnv(root)
    saved: dict[str, str | None] = {}
    ok = False
    try:
        lvm.start()
        for key, value in lvm.environ().items():
            saved[key] = os.environ.get(key)
            os.environ[key] = value
        vg = lvm.add_vg(size, prefix='ibbench')
        yield lvm, vg
        ok = True
    finally:
        try:
            left = lvm.close()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        if left and ok:
            raise RuntimeError(f'lvm: loop devices left attached: {left}')
