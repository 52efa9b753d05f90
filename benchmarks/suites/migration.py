"""5. Migration between two hosts on one machine.

Hosts "a" and "b" each have an instances_path; a
:class:`~imagebackend.transport.LocalTransport` (wrapped to count what it
copies: apparent and allocated bytes of every file it sends or fetches)
maps their names to those directories. The image is only in a's image
folder: on b it is "gone upstream", so b side-loads bases from a, as after
an image deletion.

Per repetition, on new instances: spawn on a (the baseline: what making
the instance costs), cold migration (``migration.migrate_disks`` a -> b,
then ``flows.finish_migration`` on b), and for a second instance
``flows.pre_live_migration`` on b from a's records. The warm-up brings the
shared bases to b; what it copied is context. Bytes copied per instance
are compared with the full disks' data (a Qcow2 disk's overlay plus its
base; a Flat disk's file).
"""

from __future__ import annotations

import os

from imagebackend import fileutils
from imagebackend import processes
from imagebackend import transport as transport_mod

from benchmarks import env, floors
from benchmarks.core import Figure, Target, timed

from driver import flows
from driver import instance as instance_mod
from driver import migration

NAME = 'migration'
TITLE = 'finish_migration / pre_live_migration per instance, bytes copied'
IMAGE = 'img'


class CountingTransport(transport_mod.LocalTransport):
    """A LocalTransport that logs every copy it made, with its size."""

    def __init__(self, hosts):
        super().__init__(hosts)
        self.log: list[dict] = []

    def _note(self, op: str, host: str, relpath: str, src: str) -> None:
        self.log.append({'op': op, 'host': host, 'relpath': relpath,
                         'apparent': env.apparent(src),
                         'allocated': env.allocated(src)})

    def fetch(self, host, relpath, dst, progress=None):
        super().fetch(host, relpath, dst, progress)
        self._note('fetch', host, relpath,
                   os.path.join(self.hosts[host], relpath))

    def put(self, host, src, relpath, progress=None):
        super().put(host, src, relpath, progress)
        self._note('put', host, relpath, src)


def space_needed(s: env.Sizes) -> int:
    return 12 * s.image_data + 8 * s.ephemeral // 8 + 256 * env.MiB


def run(ctx, result) -> None:
    s = ctx.sizes
    images_a = os.path.join(ctx.dir, 'images-a')
    images_b = os.path.join(ctx.dir, 'images-b')  # empty: gone upstream
    os.makedirs(images_a)
    os.makedirs(images_b)
    _src, data = env.make_image(images_a, IMAGE, s.image_virtual,
                                s.image_data)
    root_gb, eph_gb, swap_mb = s.migration_flavor
    result.context.update(
        image={'virtual_size': s.image_virtual, 'data_bytes': data},
        flavor={'root_gb': root_gb, 'ephemeral_gb': eph_gb,
                'swap_mb': swap_mb},
        hosts='two instances_paths on one machine, LocalTransport; the '
              'image is missing upstream on b (bases side-loaded from a)')
    for floor in floors.available():
        _one_backend(ctx, result, floor, images_a, images_b)


def _one_backend(ctx, result, floor, images_a, images_b) -> None:
    t = floor.image_type
    root_gb, eph_gb, swap_mb = ctx.sizes.migration_flavor
    base = os.path.join(ctx.dir, t)
    paths = {'a': os.path.join(base, 'a', 'instances'),
             'b': os.path.join(base, 'b', 'instances')}
    transport = CountingTransport(paths)
    hosts = {'a': env.Host(os.path.join(base, 'a'), images_dir=images_a,
                           image_type=t),
             'b': env.Host(os.path.join(base, 'b'), images_dir=images_b,
                           image_type=t)}
    for h in hosts.values():
        floor.configure(h.conf)
    a = hosts['a'].backend(transport=transport)
    b = hosts['b'].backend(transport=transport)

    def new_instance():
        return instance_mod.Instance(
            image_ref=IMAGE, name='bench',
            flavor=instance_mod.Flavor(root_gb=root_gb, ephemeral_gb=eph_gb,
                                       swap=swap_mb))

    def copied(since: int) -> list[dict]:
        return transport.log[since:]

    samples = {k: [] for k in ('spawn', 'send', 'finish', 'pre_live',
                               'cold_bytes', 'live_bytes', 'full_bytes',
                               'cold_commands', 'live_commands',
                               'spawn_commands')}
    first: dict = {}
    result.log(f'{t}: spawn / migrate+finish / pre_live, {ctx.reps} reps')
    for i in range(-ctx.warmup, ctx.reps):
        x, y = new_instance(), new_instance()
        mapping = instance_mod.disk_mapping(x)
        try:
            with processes.recording() as c_spawn:
                spawn_s, _ = timed(lambda: flows.spawn(a, None, x, mapping))
            full = _full_bytes(a, x, mapping)
            mark = len(transport.log)
            with processes.recording() as c_cold:
                send_s, _ = timed(lambda: migration.migrate_disks(
                    a, x, mapping, 'b', transport))
                finish_s, _ = timed(lambda: flows.finish_migration(
                    b, None, x, mapping, source_host='a'))
            cold = copied(mark)
            flows.spawn(a, None, y, mapping)
            records = a.records.list(y.uuid)
            mark = len(transport.log)
            with processes.recording() as c_live:
                live_s, _ = timed(lambda: flows.pre_live_migration(
                    b, None, y, mapping, records, source_host='a'))
            live = copied(mark)
            kinds = _classify(a, x, cold)
        finally:
            for h in hosts.values():
                h.forget(x.uuid)
                h.forget(y.uuid)
        if i < 0:
            first.setdefault('cold', []).extend(kinds)
            first.setdefault('live', []).extend(live)
            continue
        samples['spawn'].append(spawn_s)
        samples['send'].append(send_s)
        samples['finish'].append(finish_s)
        samples['pre_live'].append(live_s)
        samples['cold_bytes'].append(sum(e['allocated'] for e in cold))
        samples['live_bytes'].append(sum(e['allocated'] for e in live))
        samples['full_bytes'].append(full)
        samples['spawn_commands'].append(len(c_spawn))
        samples['cold_commands'].append(len(c_cold))
        samples['live_commands'].append(len(c_live))
        if i == 0:
            result.context.setdefault('copies_of_one_instance', {})[t] = {
                'cold': kinds, 'live': live}

    shared_base = floor.image_type == 'qcow2'
    result.add(Figure(
        name=f'{t}.migration.finish_vs_spawn',
        description='flows.finish_migration on the destination, per instance',
        unit='s', samples=samples['finish'],
        baseline_description='flows.spawn of the same instance on the source',
        baseline_samples=samples['spawn'],
        context={'send_seconds': samples['send'],
                 'commands_per_instance': {
                     'spawn': samples['spawn_commands'],
                     'migrate_and_finish': samples['cold_commands']}}))
    result.add(Figure(
        name=f'{t}.migration.pre_live_vs_spawn',
        description='flows.pre_live_migration on the destination, per '
                    'instance',
        unit='s', samples=samples['pre_live'],
        baseline_description='flows.spawn of the same instance on the source',
        baseline_samples=samples['spawn'],
        context={'commands_per_instance': samples['live_commands']}))
    never_full = Target('<', 1.0, why='issue 4: only overlays and '
                        'side-loaded bases travel, never a full disk when a '
                        'base is shared')
    result.add(Figure(
        name=f'{t}.migration.cold_bytes_vs_full',
        description='allocated bytes copied between hosts per instance '
                    '(migrate_disks + finish_migration, bases already on b)',
        unit='bytes', samples=samples['cold_bytes'],
        baseline_description='data of the full disks that travel (overlay + '
                             'base for Qcow2; the file for Flat)',
        baseline_samples=samples['full_bytes'],
        target=never_full if shared_base else None,
        context={'first_instance_copies': first.get('cold', []),
                 'first_instance_bytes': sum(
                     e['allocated'] for e in first.get('cold', [])),
                 'note': None if shared_base else
                 'Flat disks have no shared base: a full copy is the design'}))
    result.add(Figure(
        name=f'{t}.migration.live_bytes_vs_full',
        description='allocated bytes copied between hosts per instance by '
                    'pre_live_migration (bases already on b)',
        unit='bytes', samples=samples['live_bytes'],
        baseline_description='data of the full disks (as above)',
        baseline_samples=samples['full_bytes'],
        target=never_full if shared_base else None,
        context={'first_instance_copies': first.get('live', []),
                 'first_instance_bytes': sum(
                     e['allocated'] for e in first.get('live', []))}))
    fileutils.remove_path(base)


def _full_bytes(backend, instance, mapping) -> int:
    """Data of the instance's disks that travel, as full disks."""
    total = 0
    for rec in backend.records.list(instance.uuid):
        if rec.name == 'disk.swap':
            continue  # disposable: recreated, never copied
        total += env.allocated(rec.location)
        if rec.backing:
            total += env.allocated(backend.image_cache.path(rec.backing))
    return total


def _classify(backend, instance, copies) -> list[dict]:
    """Each copy with what it was: base, records, overlay or full disk."""
    recs = {r.name: r for r in backend.records.list(instance.uuid)}
    out = []
    for c in copies:
        rel = c['relpath']
        name = os.path.basename(rel)
        if rel.startswith('_base' + os.sep):
            kind = 'side-loaded base'
        elif name == 'disks.json':
            kind = 'records'
        elif name in recs and recs[name].backing:
            kind = 'overlay'
        else:
            kind = 'full disk'
        out.append(dict(c, kind=kind))
    return out
