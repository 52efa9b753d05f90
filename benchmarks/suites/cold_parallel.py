"""2. Spawn with a cold cache: N root disks from one image at once.

N = 1, 4, 16 spawns start together from a barrier, as N threads sharing one
Backend or as N processes with a Backend each (fork), on a fresh
instances_path every repetition. The image source counts its fetches
(a :class:`~imagebackend.sources.DirectoryImageSource` that appends a line
per ``open()``, as ``tests/functional/test_concurrency.py`` does): there
must be exactly one. The wall time (barrier release to the last disk
created) is compared with what one fetch plus N disks one after the other
cost, both measured in the same run: a cold fetch into a fresh cache, and
one root disk from a cached base.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import traceback
import uuid as uuid_mod

from imagebackend import fileutils
from imagebackend import sources

from benchmarks import env, floors
from benchmarks.core import Figure, Side, Target, interleaved

from driver import instance as instance_mod

NAME = 'cold_parallel'
TITLE = 'cold cache, N parallel spawns: one fetch, wall vs serial'
IMAGE = 'cold'
MODES = ('threads', 'processes')
# Deadlock guard (a hung spawn must fail, not hang the run); not a timing.
GUARD = 600


class CountingSource(sources.DirectoryImageSource):
    """Appends one line to ``count_file`` per fetch (any thread/process)."""

    def __init__(self, directory: str, count_file: str):
        super().__init__(directory)
        self.count_file = count_file

    def open(self, context, image_id):
        fd = os.open(self.count_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                     0o644)
        try:
            os.write(fd, f'{os.getpid()} {threading.get_ident()}\n'.encode())
        finally:
            os.close(fd)
        yield from super().open(context, image_id)


def fetches(count_file: str) -> int:
    try:
        with open(count_file) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


def _backend(instances_path, images_dir, count_file):
    host = env.Host(os.path.dirname(instances_path), images_dir=images_dir,
                    instances_path=instances_path)
    return host.backend(source=CountingSource(images_dir, count_file))


def space_needed(s: env.Sizes) -> int:
    return (max(s.parallel) + 4) * s.cold_image_data * 2 + 128 * env.MiB


def run(ctx, result) -> None:
    s = ctx.sizes
    images = os.path.join(ctx.dir, 'images')
    os.makedirs(images)
    _src, data = env.make_image(images, IMAGE, s.cold_image_virtual,
                                s.cold_image_data)
    result.context.update(
        image={'virtual_size': s.cold_image_virtual, 'data_bytes': data,
               'source_format': 'qcow2'},
        root_size=s.cold_root, parallel=list(s.parallel), modes=list(MODES),
        cpus=os.cpu_count())
    for floor in floors.available():
        _one_backend(ctx, result, images, floor.image_type)


def _one_backend(ctx, result, images, t) -> None:
    s = ctx.sizes
    base = _baselines(ctx, images, t)
    fetch, disk = base['fetch'].seconds, base['disk'].seconds
    for mode in MODES:
        for n in s.parallel:
            result.log(f'{t}: {n} {mode}, {ctx.reps} reps')
            walls, counts = [], []
            for i in range(-ctx.warmup, ctx.reps):
                rep_dir = os.path.join(ctx.dir, f'{t}-{mode}-{n}-{i}')
                try:
                    wall, count = _cold_spawn(rep_dir, images, t, mode, n,
                                              s.cold_root)
                finally:
                    fileutils.remove_path(rep_dir)
                if i >= 0:
                    walls.append(wall)
                    counts.append(count)
            serial = [f + n * d for f, d in zip(fetch, disk)]
            result.add(Figure(
                name=f'{t}.cold.{mode}.n{n}.fetches',
                description=f'fetches performed by {n} cold spawns '
                            f'({mode})',
                unit='count', samples=counts,
                baseline_description='images the spawns asked for (1)',
                baseline_samples=[1] * len(counts),
                target=Target('==', 1, on='max', why='issue 4: exactly 1 '
                              'fetch per image')))
            result.add(Figure(
                name=f'{t}.cold.{mode}.n{n}.wall_vs_serial',
                description=f'wall time, barrier to last of {n} root disks '
                            f'({mode}, cold cache)',
                unit='s', samples=walls,
                baseline_description=f'one cold fetch + {n} x one root disk '
                                     'from a cached base (same run)',
                baseline_samples=serial,
                context={'fetch_seconds': fetch, 'disk_seconds': disk}))


def _baselines(ctx, images, t) -> dict:
    """One cold fetch (fresh cache each rep) and one root disk from a
    cached base, interleaved."""
    s = ctx.sizes
    warm_host = env.Host(os.path.join(ctx.dir, f'{t}-warm'),
                         images_dir=images)
    warm = warm_host.backend()
    warm.image_cache.fetch_image(None, IMAGE)
    state: dict = {'n': 0}

    def fresh(i):
        state['n'] += 1
        state['host'] = env.Host(os.path.join(ctx.dir, f'{t}-fetch'
                                              f'{state["n"]}'),
                                 images_dir=images)
        state['backend'] = state['host'].backend()

    def drop_fresh(i):
        fileutils.remove_path(state['host'].root)

    def new_disk(i):
        inst = instance_mod.Instance()
        state['disk'] = warm.by_name(inst, 'disk', t)
        state['uuid'] = inst.uuid

    def drop_disk(i):
        warm_host.forget(state['uuid'])

    runs = interleaved([
        Side('fetch', lambda i: _fetch(state['backend']), fresh,
             drop_fresh),
        Side('disk', lambda i: state['disk'].create_from_image(
            None, IMAGE, s.cold_root), new_disk, drop_disk),
    ], ctx.reps, ctx.warmup)
    fileutils.remove_path(warm_host.root)
    return runs


def _fetch(backend) -> None:
    backend.image_cache.fetch_image(None, IMAGE)


def _cold_spawn(rep_dir, images, t, mode, n, size) -> tuple[float, int]:
    """N root disks from IMAGE on an empty cache; (wall seconds, fetches)."""
    instances_path = os.path.join(rep_dir, 'instances')
    os.makedirs(instances_path)
    count_file = os.path.join(rep_dir, 'fetches')
    uuids = [str(uuid_mod.uuid4()) for _ in range(n)]
    if mode == 'threads':
        backend = _backend(instances_path, images, count_file)
        t0, ends = _threads(backend, t, uuids, size)
    else:
        t0, ends = _processes(instances_path, images, count_file, t, uuids,
                              size)
    check = _backend(instances_path, images, count_file)
    for uuid in uuids:
        record = check.records.get(uuid, 'disk')
        if record is None or not record.created:
            raise RuntimeError(f'cold spawn made no disk for {uuid}')
    return max(ends) - t0, fetches(count_file)


def _threads(backend, t, uuids, size):
    barrier = threading.Barrier(len(uuids) + 1)
    ends, errors = [], []

    def one(uuid):
        try:
            disk = backend.by_name(instance_mod.Instance(uuid=uuid), 'disk',
                                   t)
            barrier.wait(GUARD)
            disk.create_from_image(None, IMAGE, size)
            ends.append(time.perf_counter())
        except BaseException:
            errors.append(traceback.format_exc())
            barrier.abort()

    threads = [threading.Thread(target=one, args=(u,)) for u in uuids]
    for th in threads:
        th.start()
    try:
        barrier.wait(GUARD)
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for th in threads:
        th.join(GUARD)
        if th.is_alive():
            raise RuntimeError('a spawn thread hung')
    if errors:
        raise RuntimeError('spawn thread failed:\n' + errors[0])
    return t0, ends


def _worker(instances_path, images_dir, count_file, t, uuid, size, barrier,
            queue):
    """One process: a compute host of its own, one root disk."""
    try:
        backend = _backend(instances_path, images_dir, count_file)
        disk = backend.by_name(instance_mod.Instance(uuid=uuid), 'disk', t)
        barrier.wait(GUARD)
        disk.create_from_image(None, IMAGE, size)
        queue.put(('ok', time.perf_counter()))
    except BaseException:
        queue.put(('error', traceback.format_exc()))
        try:
            barrier.abort()
        except Exception:
            pass


def _processes(instances_path, images_dir, count_file, t, uuids, size):
    mp = multiprocessing.get_context('fork')
    barrier = mp.Barrier(len(uuids) + 1)
    queue = mp.Queue()
    procs = [mp.Process(target=_worker,
                        args=(instances_path, images_dir, count_file, t, u,
                              size, barrier, queue)) for u in uuids]
    for p in procs:
        p.start()
    try:
        try:
            barrier.wait(GUARD)
        except threading.BrokenBarrierError:
            pass
        t0 = time.perf_counter()
        results = [queue.get(timeout=GUARD) for _ in procs]
    finally:
        for p in procs:
            p.join(GUARD)
            if p.is_alive():
                p.kill()
                p.join()
    errors = [r[1] for r in results if r[0] != 'ok']
    if errors:
        raise RuntimeError('spawn process failed:\n' + errors[0])
    return t0, [r[1] for r in results]
