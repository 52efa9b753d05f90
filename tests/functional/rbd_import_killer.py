"""Stand-in for ``rbd`` that kills ``rbd import`` half way (failure tests).

Installed as ``rbd`` first on the test's PATH (see test_rbd.py). Any other
``rbd`` command runs the real tool (``$REAL_RBD``). For ``rbd import ...
<file> <name>`` the real tool is started as ``rbd import ... - <name>``
with its input fed from here: the first half of the file is written, then,
as soon as the image exists in the pool (the import has begun writing it),
the real ``rbd`` is killed with SIGKILL and this process exits 137, as a
command killed mid-way does. A line is written to ``$KILLER_LOG``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import rados
import rbd

CHUNK = 1024 * 1024
WAIT = 60.0   # seconds at most for the image to appear


def _option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def main(argv: list[str]) -> int:
    real = os.environ['REAL_RBD']
    if not argv or argv[0] != 'import':
        os.execv(real, [real] + argv)
    args = list(argv)
    source, name = args[-2], args[-1]
    args[-2] = '-'
    pool = _option(args, '--dest-pool') or _option(args, '--pool') or 'rbd'
    conf = _option(args, '--conf') or os.environ.get('CEPH_CONF')
    user = _option(args, '--id')
    size = os.path.getsize(source)
    child = subprocess.Popen([real] + args, stdin=subprocess.PIPE)
    fed = 0
    with open(source, 'rb') as f:
        while fed < max(size // 2, CHUNK):
            data = f.read(CHUNK)
            if not data:
                break
            child.stdin.write(data)
            fed += len(data)
    child.stdin.flush()
    appeared = False
    with rados.Rados(conffile=conf, rados_id=user) as cluster:
        with cluster.open_ioctx(pool) as ioctx:
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline and child.poll() is None:
                if name in rbd.RBD().list(ioctx):
                    appeared = True
                    break
                time.sleep(0.01)
    running = child.poll() is None
    child.send_signal(signal.SIGKILL)
    child.wait()
    with open(os.environ['KILLER_LOG'], 'a') as log:
        log.write(f'{name} fed={fed} of {size} appeared={appeared} '
                  f'killed_running={running}\n')
    return 137


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
