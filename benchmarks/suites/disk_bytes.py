"""3. Bytes: what one instance costs on disk, per backend.

Allocated bytes (``st_blocks``, what ``du`` says) of an instance's
directory (root + ephemeral + swap + its records file), natively created
from the cached image, against the image as cached (allocated bytes of the
base: what one full copy of its data costs). What every instance shares
(the base, Qcow2's templates) is context.

Backends whose floor covers the root disk only (Lvm, Rbd, Ploop) are
measured on the root disk: its allocated bytes, natively created, against
the floor's root disk made in the same repetition, each told the way its
storage tells it (Lvm: the LV size from ``lvs``; Rbd:
``Rbd.allocated_bytes()``; Ploop: ``du`` of the disk directory).
"""

from __future__ import annotations

import os

from imagebackend import fileutils

from benchmarks import env, floors
from benchmarks.core import Figure

NAME = 'bytes'
TITLE = 'allocated bytes per instance vs the image'
IMAGE = 'img'


def space_needed(s: env.Sizes) -> int:
    return (4 * s.image_data + 64 * env.MiB + 2 * s.ephemeral // 8
            + 2 * s.image_virtual)


def run(ctx, result) -> None:
    s = ctx.sizes
    shape = env.Shape(s.root, s.ephemeral, s.swap)
    images = os.path.join(ctx.dir, 'images')
    os.makedirs(images)
    _src, data = env.make_image(images, IMAGE, s.image_virtual, s.image_data)
    host = env.Host(os.path.join(ctx.dir, 'host'), images_dir=images)
    backend = host.backend()
    entry = backend.image_cache.fetch_image(None, IMAGE)
    result.context.update(image={'virtual_size': s.image_virtual,
                                 'data_bytes': data},
                          instance=shape.describe())
    for floor in floors.available(floors.ALL):
        if floor.scope == 'root':
            ctx.envs.enter(floor, result.log)
            floor.configure(host.conf)
            _root(ctx, result, host, backend, entry, floor, shape)
            continue
        t = floor.image_type
        result.log(f'{t}: {ctx.reps} instances')
        maker = env.InstanceMaker(backend, t, IMAGE, shape)
        samples, bases, disks = [], [], {}
        for i in range(-ctx.warmup, ctx.reps):
            inst = maker.new_instance()
            maker.create(inst, 'native')
            inst_dir = host.instance_dir(inst.uuid)
            if i >= 0:
                samples.append(env.allocated(inst_dir))
                bases.append(env.allocated(entry.path))
                if not disks:
                    disks = {n: env.allocated(os.path.join(inst_dir, n))
                             for n in sorted(os.listdir(inst_dir))}
            host.forget(inst.uuid)
        shared = {e.name: env.allocated(e.path)
                  for e in backend.image_cache.entries()
                  if e.name == entry.name or t == 'qcow2'}
        result.add(Figure(
            name=f'{t}.bytes.instance_vs_image',
            description='allocated bytes of one instance directory '
                        f'({shape.describe()})',
            unit='bytes', samples=samples,
            baseline_description='allocated bytes of the image as cached '
                                 '(the base)',
            baseline_samples=bases,
            context={'per_file': disks,
                     'vs_virtual_size': samples[0] / s.image_virtual,
                     'shared_cache_entries': shared,
                     'note': 'shared cache entries are paid once per host, '
                             'not per instance'}))


def _root(ctx, result, host, backend, entry, floor, shape) -> None:
    t = floor.image_type
    result.log(f'{t}: {ctx.reps} root disks, native and floor')
    maker = env.InstanceMaker(backend, t, IMAGE, shape)
    floor.prepare(maker)
    native, bare = [], []
    for i in range(-ctx.warmup, ctx.reps):
        inst = maker.new_instance()
        disk = backend.by_name(inst, 'disk', t)
        disk.create_from_image(None, IMAGE, shape.root)
        target = os.path.join(host.instances_path,
                              f'floor-{t}-{i + ctx.warmup}')
        os.makedirs(target)
        floor.root(maker, entry, target)
        if i >= 0:
            native.append(floor.native_allocated(disk))
            bare.append(floor.allocated(maker, target))
        disk.remove_disk()
        host.forget(inst.uuid)
        floor.drop(maker, target)
        fileutils.remove_path(target)
    result.add(Figure(
        name=f'{t}.bytes.root_vs_floor',
        description='allocated bytes of one native root disk (grown to '
                    f'{shape.root // env.MiB} MiB)',
        unit='bytes', samples=native,
        baseline_description=f'the floor\'s root disk ({floor.root_text})',
        baseline_samples=bare,
        context={'measured_as': floor.bytes_text,
                 'cached_base_allocated': env.allocated(entry.path),
                 'note': 'the cached base (and, Rbd, the pool base) is '
                         'shared: paid once per host, not per disk'}))
