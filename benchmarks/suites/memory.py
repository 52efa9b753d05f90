"""7. Memory: peak RSS of one process spawning many instances.

The same child program (:mod:`benchmarks.memory_child`) runs either only
its imports (imagebackend, the driver) or those plus ``flows.spawn`` of N
Qcow2 instances with tiny disks, each child on a fresh instances_path. Its
own peak RSS (``resource.getrusage``, in the child) is compared, children
alternating, a fresh process every repetition.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from imagebackend import fileutils

from benchmarks import env
from benchmarks.core import Figure, Side, interleaved

NAME = 'memory'
TITLE = 'peak RSS: spawn of N instances in one process vs imports only'
IMAGE = 'img'
REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def space_needed(s: env.Sizes) -> int:
    return s.memory_instances * 2 * env.MiB + 128 * env.MiB


def child(mode: str, args: list[str]) -> dict:
    # Through sh, which forks the child: Linux keeps a peak RSS across
    # fork and exec, so a child forked from this (big) process would report
    # at least our own peak; one forked by sh starts from sh's.
    cmd = ['sh', '-c', '"$@"; exit $?', 'sh', sys.executable, '-m',
           'benchmarks.memory_child', '--mode', mode, *args]
    envvars = dict(os.environ)
    envvars['PYTHONPATH'] = os.pathsep.join(
        [REPO] + [p for p in envvars.get('PYTHONPATH', '').split(os.pathsep)
                  if p])
    p = subprocess.run(cmd, cwd=REPO, env=envvars, capture_output=True,
                       text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f'memory child ({mode}) exited {p.returncode}:\n'
                           f'{p.stderr.strip()}')
    return json.loads(p.stdout.strip().splitlines()[-1])


def run(ctx, result) -> None:
    s = ctx.sizes
    images = os.path.join(ctx.dir, 'images')
    os.makedirs(images)
    env.make_image(images, IMAGE, s.memory_image_virtual,
                   s.memory_image_virtual // 8)
    n = s.memory_instances
    flavor = ','.join(str(x) for x in s.memory_flavor)
    state: dict = {'k': 0}

    def new_path(i):
        state['k'] += 1
        state['path'] = os.path.join(ctx.dir, f'instances-{state["k"]}')

    def drop_path(i):
        fileutils.remove_path(state['path'])

    def spawn(i):
        return child('spawn', ['--instances-path', state['path'],
                               '--images-dir', images, '--image-id', IMAGE,
                               '--n', str(n), '--flavor', flavor])

    result.log(f'{n} instances per child, {ctx.reps} reps')
    runs = interleaved([
        Side('import', lambda i: child('import', [])),
        Side('spawn', spawn, new_path, drop_path),
    ], ctx.reps, ctx.warmup)
    mib = {k: [e['maxrss_kib'] / 1024 for e in r.extras]
           for k, r in runs.items()}
    root_gb, eph_gb, swap_mb = s.memory_flavor
    result.add(Figure(
        name=f'memory.spawn{n}_vs_import',
        description=f'peak RSS of a process that spawned {n} Qcow2 '
                    f'instances (root {root_gb} GiB + ephemeral {eph_gb} GiB '
                    f'+ swap {swap_mb} MiB, image '
                    f'{s.memory_image_virtual // env.MiB} MiB)',
        unit='MiB', samples=mib['spawn'],
        baseline_description='peak RSS of the same child that only imports '
                             'imagebackend and the driver',
        baseline_samples=mib['import'],
        context={'vmhwm_mib': {k: [e['vmhwm_kib'] / 1024 for e in r.extras
                                   if e.get('vmhwm_kib')]
                               for k, r in runs.items()},
                 'spawn_seconds_in_child': [e['seconds']
                                            for e in runs['spawn'].extras],
                 'per_instance_kib': [
                     (sp - im) * 1024 / n
                     for sp, im in zip(mib['spawn'], mib['import'])]}))
