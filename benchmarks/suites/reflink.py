"""4. Flat on a reflink filesystem: per-disk cost independent of size.

A loop-mounted XFS (``mkfs.xfs -m reflink=1``, made and removed by
:mod:`benchmarks.reflinkfs`) holds the host's instances_path and cache.
Two dense images (every byte random: a sparse image would prove nothing)
of different sizes are cached; then Flat root disks are made from each,
interleaved. A reflink shares extents, so the big image's disk should cost
what the small one's does. Each disk's record says how it was copied
(``provenance['copy']``); the filesystem's used space before and after
making disks shows the copies take no room.
"""

from __future__ import annotations

import os
import time

from imagebackend import fileutils
from imagebackend import names

from benchmarks import env, reflinkfs
from benchmarks.core import Figure, Side, Target, interleaved

from driver import instance as instance_mod

NAME = 'reflink'
TITLE = 'Flat on a loop-mounted XFS: per-disk time vs image size'


def space_needed(s: env.Sizes) -> int:
    # The XFS image fills with the cached bases; the sources sit beside it.
    return s.reflink_fs + s.reflink_small + s.reflink_big + 256 * env.MiB


def _used(path: str) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def run(ctx, result) -> None:
    s = ctx.sizes
    images = os.path.join(ctx.dir, 'images')
    os.makedirs(images)
    small_id, big_id = 'dense-small', 'dense-big'
    result.log(f'writing dense images of {s.reflink_small // env.MiB} and '
               f'{s.reflink_big // env.MiB} MiB')
    env.make_image(images, small_id, s.reflink_small, 0, fmt='raw',
                   dense=True)
    env.make_image(images, big_id, s.reflink_big, 0, fmt='raw', dense=True)
    with reflinkfs.loop_xfs(ctx.dir, s.reflink_fs, result.log) as mnt:
        host = env.Host(os.path.join(ctx.dir, 'host'), images_dir=images,
                        instances_path=os.path.join(mnt, 'instances'))
        backend = host.backend()
        fetch = {}
        for image_id in (small_id, big_id):
            t0 = time.perf_counter()
            entry = backend.image_cache.fetch_image(None, image_id)
            fetch[image_id] = {'seconds': time.perf_counter() - t0,
                               'allocated': env.allocated(entry.path)}
        big_base = backend.image_cache.get(
            names.image_cache_name(big_id)).path
        result.context.update(fs='xfs (loop, reflink=1)',
                              fs_size=s.reflink_fs, fetch=fetch,
                              images={small_id: s.reflink_small,
                                      big_id: s.reflink_big})
        _measure(ctx, result, host, backend, small_id, big_id, big_base,
                 mnt)
        _space(result, host, backend, big_id, mnt)


def _measure(ctx, result, host, backend, small_id, big_id, big_base,
             mnt) -> None:
    state: dict = {}
    copies = {small_id: {}, big_id: {}}
    reflinked: dict[int, int] = {}

    def setup(image_id):
        def new(i):
            inst = instance_mod.Instance()
            state[image_id] = (inst, backend.by_name(inst, 'disk', 'flat'))
        return new

    def create(image_id):
        return lambda i: state[image_id][1].create_from_image(None, image_id)

    def teardown(image_id):
        def drop(i):
            inst, _disk = state[image_id]
            rec = backend.records.get(inst.uuid, 'disk')
            method = rec.provenance.get('copy', '?')
            if i >= 0:
                copies[image_id][method] = copies[image_id].get(method,
                                                                0) + 1
                reflinked[i] = reflinked.get(i, 0) + (method == 'reflink')
            host.forget(inst.uuid)
        return drop

    def floor_run(i):
        env.run('cp', '--reflink=always', big_base, state['floor'])

    def floor_setup(i):
        state['floor'] = os.path.join(mnt, f'floor-{i}')

    def floor_drop(i):
        fileutils.remove_path(state['floor'])

    result.log(f'flat on xfs: small / big / cp --reflink, {ctx.reps} reps')
    runs = interleaved([
        Side('small', create(small_id), setup(small_id), teardown(small_id)),
        Side('big', create(big_id), setup(big_id), teardown(big_id)),
        Side('cp', floor_run, floor_setup, floor_drop),
    ], ctx.reps, ctx.warmup)
    result.add(Figure(
        name='flat.reflink.big_vs_small',
        description='Flat root disk from the '
                    f'{ctx.sizes.reflink_big // env.MiB} MiB dense image',
        unit='s', samples=runs['big'].seconds,
        baseline_description='Flat root disk from the '
                             f'{ctx.sizes.reflink_small // env.MiB} MiB dense '
                             'image',
        baseline_samples=runs['small'].seconds,
        target=Target('<=', 1.2, why='issue 4: per-disk time must not grow '
                      'with image size on a reflink filesystem'),
        context={'copy_method': copies}))
    n = len(runs['big'].seconds)
    result.add(Figure(
        name='flat.reflink.copies_by_reflink',
        description="disks whose record says provenance['copy'] == "
                    "'reflink' (per repetition, both images)",
        unit='count',
        samples=[reflinked.get(i, 0) for i in range(n)],
        baseline_description='disks made per repetition',
        baseline_samples=[2] * n,
        target=Target('==', 1.0, why='the copy method recorded is reflink'),
        context={'copy_method': copies}))
    result.add(Figure(
        name='flat.reflink.native_vs_cp_reflink',
        description='Flat root disk from the big dense image',
        unit='s', samples=runs['big'].seconds,
        baseline_description='bare `cp --reflink=always` of the same base',
        baseline_samples=runs['cp'].seconds))


def _space(result, host, backend, image_id, mnt) -> None:
    """Used bytes on the XFS per disk made from the big image."""
    insts = [instance_mod.Instance() for _ in range(3)]
    os.sync()
    before = _used(mnt)
    for inst in insts:
        backend.by_name(inst, 'disk', 'flat').create_from_image(None,
                                                                image_id)
    os.sync()
    after = _used(mnt)
    for inst in insts:
        host.forget(inst.uuid)
    result.context['fs_used_bytes_per_big_disk'] = (after - before) // len(
        insts)
