"""1. Spawn from a cached base, per backend.

Per instance: root (from the cached image, grown), ephemeral (ext4) and
swap, made three ways in the same run, interleaved: the backend's floor
(bare commands, :mod:`benchmarks.floors`), the native path
(``create_from_image`` / ``create_from_func``) and the legacy ``cache()``
path through :mod:`imagebackend.shim` on the same backend. Also: how many
commands each path runs, how many of them are ``qemu-img info``, and
whether the cached base stayed sparse (allocated bytes vs the random data
the image holds; one fetch per repetition into a fresh cache).

Backends whose floor covers the root disk only (Lvm, Rbd, Ploop: the
floors' ``scope`` is 'root') are measured on the root disk: native
``create_from_image`` vs the floor, interleaved, in the backend's
environment (a volume group, a Ceph cluster), with the commands each runs.
"""

from __future__ import annotations

import os

from imagebackend import fileutils

from benchmarks import env, floors
from benchmarks.core import Figure, Side, Target, interleaved

NAME = 'spawn_cached'
TITLE = 'spawn from a cached base: native vs floor vs legacy'
IMAGE = 'img'
# Backends whose native spawn from a cached base runs no command at all
# (qcow2: the overlay is written in-process).
_NO_PROCESSES = ('qcow2',)


def space_needed(s: env.Sizes) -> int:
    # source image + base + a few transient Flat instances + templates,
    # + what Lvm's loop-backed volume group may write (two roots' copy of
    # the image).
    return (8 * s.image_data + 2 * s.ephemeral // 8 + 2 * s.image_virtual
            + 256 * env.MiB)


def run(ctx, result) -> None:
    s = ctx.sizes
    shape = env.Shape(s.root, s.ephemeral, s.swap)
    images = os.path.join(ctx.dir, 'images')
    os.makedirs(images)
    src, data = env.make_image(images, IMAGE, s.image_virtual, s.image_data)
    result.context.update(
        image={'virtual_size': s.image_virtual, 'data_bytes': data,
               'source_format': 'qcow2', 'source_file_bytes':
               os.path.getsize(src)},
        instance=shape.describe(), workdir_fs=env.fs_type(ctx.dir),
        reference_nova_34={
            'note': 'from issue 4, not measured here',
            'qcow2_instance_s': 0.41, 'qcow2_subprocesses': 13,
            'flat_instance_s': 3.3, 'bare_qemu_img_create_s': 0.008})

    _base_sparse(ctx, result, images, data)

    host = env.Host(os.path.join(ctx.dir, 'host'), images_dir=images)
    backend = host.backend()
    entry = backend.image_cache.fetch_image(None, IMAGE)
    skipped = floors.unavailable(floors.ALL)
    if skipped:
        result.context['backends_not_measured'] = skipped
    measure = {'instance': _backend, 'root': _root_backend}
    for floor in floors.available(floors.ALL):
        ctx.envs.enter(floor, result.log)
        floor.configure(host.conf)
        measure[floor.scope](ctx, result, host, backend, entry, floor, shape)


def _base_sparse(ctx, result, images, data) -> None:
    """Fetch the image into a fresh cache each repetition."""
    fetched = {'n': 0}

    def fresh(i):
        fetched['n'] += 1
        fetched['host'] = env.Host(
            os.path.join(ctx.dir, f'fetch{fetched["n"]}'), images_dir=images)
        fetched['backend'] = fetched['host'].backend()

    def fetch(i):
        e = fetched['backend'].image_cache.fetch_image(None, IMAGE)
        return {'allocated': env.allocated(e.path),
                'apparent': os.path.getsize(e.path), 'format': e.format}

    def drop(i):
        fileutils.remove_path(fetched['host'].root)

    runs = interleaved([Side('fetch', fetch, fresh, drop)], ctx.reps,
                       ctx.warmup)['fetch']
    result.add(Figure(
        name='base.allocated_vs_data',
        description='allocated bytes (st_blocks) of the cached base after '
                    'a fetch (qcow2 source, force_raw_images)',
        unit='bytes', samples=runs.extra('allocated'),
        baseline_description='bytes of random data the image holds',
        baseline_samples=[data] * len(runs.seconds),
        target=Target('<=', 1.05, why='issue 4: the cached base stays '
                      'sparse (the fetch does not write zeros as data)'),
        context={'apparent_size': runs.extras[0]['apparent'],
                 'format': runs.extras[0]['format'],
                 'fetch_seconds': runs.seconds}))


def _backend(ctx, result, host, backend, entry, floor, shape) -> None:
    t = floor.image_type
    result.log(f'{t}: floor / native / legacy, {ctx.reps} reps')
    maker = env.InstanceMaker(backend, t, IMAGE, shape)
    floor.prepare(maker)
    current: dict[str, str] = {}

    def new_instance(i):
        current['inst'] = maker.new_instance()

    def drop_instance(i):
        host.forget(current['inst'].uuid)

    copies: dict[str, int] = {}

    def drop_native(i):
        record = backend.records.get(current['inst'].uuid, 'disk')
        # Flat: how the image was copied; Qcow2: who wrote the overlay.
        method = record.provenance.get('copy') or \
            record.provenance.get('overlay', 'overlay')
        if i >= 0:
            copies[method] = copies.get(method, 0) + 1
        drop_instance(i)

    def floor_dir(i):
        current['floor'] = os.path.join(host.instances_path,
                                        f'floor-{t}-{i}')
        os.makedirs(current['floor'])

    def drop_floor(i):
        fileutils.remove_path(current['floor'])

    sides = [
        Side('floor', lambda i: floor.instance(maker, entry,
                                               current['floor']),
             floor_dir, drop_floor),
        Side('native', lambda i: maker.create(current['inst'], 'native'),
             new_instance, drop_native),
        Side('legacy', lambda i: maker.create(current['inst'], 'legacy'),
             new_instance, drop_instance),
    ]
    runs = interleaved(sides, ctx.reps, ctx.warmup)
    fl, nat, leg = runs['floor'], runs['native'], runs['legacy']
    per_disk = {side: {d: r.extra(d) for d in ('root', 'ephemeral', 'swap')}
                for side, r in runs.items()}
    commands = {'native': env.command_names(nat.commands[0]),
                'legacy': env.command_names(leg.commands[0])}

    result.add(Figure(
        name=f'{t}.instance.native_vs_floor',
        description=f'native instance ({shape.describe()})',
        unit='s', samples=nat.seconds,
        baseline_description=floor.instance_text,
        baseline_samples=fl.seconds, target=floor.instance_target,
        context={'per_disk_seconds': per_disk,
                 'floor_processes': fl.extras[0]['processes']}))
    result.add(Figure(
        name=f'{t}.root.native_vs_floor',
        description='native root disk (create_from_image, grown)',
        unit='s', samples=per_disk['native']['root'],
        baseline_description=floor.root_text,
        baseline_samples=per_disk['floor']['root'],
        target=floor.root_target,
        context={'root_copy_method': copies}))
    result.add(Figure(
        name=f'{t}.instance.native_vs_legacy',
        description='native instance',
        unit='s', samples=nat.seconds,
        baseline_description='legacy cache() path via imagebackend.shim, '
                             'same backend',
        baseline_samples=leg.seconds,
        target=Target('<', 1.0, why='issue 4: native faster than legacy'),
        context={'per_disk_seconds': {'native': per_disk['native'],
                                      'legacy': per_disk['legacy']}}))
    result.add(Figure(
        name=f'{t}.subprocesses.native_vs_legacy',
        description='commands run per instance, native path',
        unit='count', samples=nat.count(),
        baseline_description='commands run per instance, legacy path',
        baseline_samples=leg.count(),
        target=(Target('==', 0, on='max', why='issue 4: native runs fewer '
                       'subprocesses than legacy; a qcow2 spawn runs none '
                       '(its legacy path neither, since issue 13: fewer '
                       'than none cannot be)')
                if t in _NO_PROCESSES else
                Target('<', 1.0, why='issue 4: native runs fewer '
                       'subprocesses than legacy')),
        context={'commands': commands,
                 'floor_processes': fl.extras[0]['processes'],
                 'note': 'qemu-img info runs under a resource-limit wrapper '
                         '(python -m oslo_concurrency.prlimit): one command, '
                         'two processes'}))
    result.add(Figure(
        name=f'{t}.qemu_img_info.native',
        description='qemu-img info per instance, native path (on disks and '
                    'bases the library made)',
        unit='count', samples=nat.count(env.is_qemu_img_info),
        baseline_description='qemu-img info per instance, legacy path',
        baseline_samples=leg.count(env.is_qemu_img_info),
        target=Target('==', 0, on='max', why='issue 4: no qemu-img info on '
                      'disks the library made (format and size are in the '
                      'record)')))



def _root_backend(ctx, result, host, backend, entry, floor, shape) -> None:
    """Root disk only: native ``create_from_image`` vs the floor."""
    t = floor.image_type
    result.log(f'{t}: root disk, floor / native, {ctx.reps} reps')
    maker = env.InstanceMaker(backend, t, IMAGE, shape)
    prepared = floor.prepare(maker) or {}
    current: dict = {}

    def new_instance(i):
        current['inst'] = maker.new_instance()

    def native(i):
        disk = backend.by_name(current['inst'], 'disk', t)
        disk.create_from_image(None, IMAGE, shape.root)
        current['disk'] = disk

    copies: dict[str, int] = {}

    def drop_native(i):
        record = backend.records.get(current['inst'].uuid, 'disk')
        how = record.provenance.get('copy') or record.provenance.get('how')
        if i >= 0:
            copies[how] = copies.get(how, 0) + 1
        current.pop('disk').remove_disk()
        host.forget(current['inst'].uuid)

    def floor_dir(i):
        current['floor'] = os.path.join(host.instances_path,
                                        f'floor-{t}-{i + ctx.warmup}')
        os.makedirs(current['floor'])

    def drop_floor(i):
        floor.drop(maker, current['floor'])
        fileutils.remove_path(current['floor'])

    sides = [
        Side('floor', lambda i: floor.root(maker, entry, current['floor']),
             floor_dir, drop_floor),
        Side('native', native, new_instance, drop_native),
    ]
    if floor.durable_text:
        sides.append(Side('durable', lambda i: floor.durable_root(
            maker, entry, current['floor']), floor_dir, drop_floor))
    runs = interleaved(sides, ctx.reps, ctx.warmup)
    fl, nat = runs['floor'], runs['native']
    result.add(Figure(
        name=f'{t}.root.native_vs_floor',
        description='native root disk (create_from_image, the base '
                    f'cached, grown to {shape.root // env.MiB} MiB)',
        unit='s', samples=nat.seconds,
        baseline_description=floor.root_text,
        baseline_samples=fl.extra('root'), target=floor.root_target,
        context={'root_copy_method': copies, **prepared}))
    if floor.durable_text:
        result.add(Figure(
            name=f'{t}.root.native_vs_durable_floor',
            description='native root disk, as above (context: the floor '
                        'above leaves its data in the page cache)',
            unit='s', samples=nat.seconds,
            baseline_description=floor.durable_text,
            baseline_samples=runs['durable'].extra('root')))
    result.add(Figure(
        name=f'{t}.subprocesses.native_vs_floor',
        description='commands run per root disk, native path',
        unit='count', samples=nat.count(),
        baseline_description='bare commands per root disk (the floor)',
        baseline_samples=fl.extra('processes'),
        context={'commands': env.command_names(nat.commands[0])}))
