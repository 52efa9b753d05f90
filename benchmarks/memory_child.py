"""A child process for the memory suite; prints one JSON line.

``python -m benchmarks.memory_child --mode import`` imports what a spawn
uses (imagebackend and the driver's flows) and exits; ``--mode spawn``
also spawns ``--n`` instances (root from the cached image, ephemeral and
swap on Qcow2) with ``driver.flows.spawn`` in this one process. Either way
it reports its own peak RSS (``resource.getrusage(RUSAGE_SELF)``: the
commands it runs are other processes and not counted).

Linux carries a peak RSS across fork and exec, so the parent starts this
child through ``sh`` (which forks it): the child then starts from the
shell's few MiB, not from the benchmark process's own peak.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

# Both modes import the same modules: the difference is the spawns.
import imagebackend  # noqa: F401
from benchmarks import env
from driver import flows
from driver import instance as instance_mod


def _vmhwm_kib() -> int | None:
    """The kernel's high-water mark of this process's RSS (a cross-check
    of getrusage)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument('--mode', choices=('import', 'spawn'), required=True)
    p.add_argument('--instances-path')
    p.add_argument('--images-dir')
    p.add_argument('--image-id', default='img')
    p.add_argument('--n', type=int, default=100)
    p.add_argument('--flavor', default='1,1,16',
                   help='root GiB, ephemeral GiB, swap MiB')
    args = p.parse_args(argv)
    seconds = 0.0
    if args.mode == 'spawn':
        root_gb, eph_gb, swap_mb = (int(x) for x in args.flavor.split(','))
        host = env.Host(args.instances_path, images_dir=args.images_dir,
                        instances_path=args.instances_path,
                        image_type='qcow2')
        backend = host.backend()
        t0 = time.perf_counter()
        for _ in range(args.n):
            inst = instance_mod.Instance(
                image_ref=args.image_id, name='bench',
                flavor=instance_mod.Flavor(root_gb=root_gb,
                                           ephemeral_gb=eph_gb,
                                           swap=swap_mb))
            flows.spawn(backend, None, inst,
                        instance_mod.disk_mapping(inst))
        seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({'mode': args.mode, 'n': args.n if args.mode == 'spawn'
                      else 0, 'maxrss_kib': peak_kib,
                      'vmhwm_kib': _vmhwm_kib(), 'seconds': seconds}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
