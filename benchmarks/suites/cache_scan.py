"""6. Cache manager: one scan over many cache entries and instances.

The host is generated directly (fast, no qemu-img): cache entries are tiny
data files with their sidecars, instances are records files whose disks
name cache entries as their backing. ``cache_manager.scan(backend)`` (use
counts from records, age and allocation of every entry) is timed against a
bare pass over the same files in plain Python: list both directories,
``json.load`` every sidecar and records file, ``stat`` every data file, no
validation. Nova's manager ran ``qemu-img info`` on every instance's root
instead (not measured here).
"""

from __future__ import annotations

import json
import os
import time

from imagebackend import cache as cache_mod
from imagebackend import cache_manager
from imagebackend import names
from imagebackend import records as records_mod

from benchmarks import env
from benchmarks.core import Figure, Side, interleaved

from driver import instance as instance_mod

NAME = 'cache_manager'
TITLE = 'cache_manager.scan over many entries and instances'
DATA = 4096
DISKS = ('disk', 'disk.local', 'disk.swap')


def space_needed(s: env.Sizes) -> int:
    return (s.cache_entries * 3 * 4096 + s.cache_instances * 3 * 4096
            + 64 * env.MiB)


def run(ctx, result) -> None:
    s = ctx.sizes
    host = env.Host(os.path.join(ctx.dir, 'host'))
    backend = host.backend()
    result.log(f'generating {s.cache_entries} entries and '
               f'{s.cache_instances} instances')
    t0 = time.perf_counter()
    backing = _generate(backend, s.cache_entries, s.cache_instances)
    gen = time.perf_counter() - t0
    base_dir = backend.image_cache.base_dir
    found = {}

    def scan(i):
        found['scan'] = cache_manager.scan(backend)

    def bare(i):
        found['bare'] = bare_scan(host.instances_path, base_dir)

    result.log(f'scan / bare, {ctx.reps} reps')
    runs = interleaved([Side('scan', scan), Side('bare', bare)], ctx.reps,
                       ctx.warmup)
    uses = found['scan']
    if len(uses) != s.cache_entries or len(found['bare']) != s.cache_entries:
        raise RuntimeError(f'scan found {len(uses)} entries, bare pass '
                           f'{len(found["bare"])}, expected '
                           f'{s.cache_entries}')
    users = sum(u.users for u in uses)
    if users != backing:
        raise RuntimeError(f'scan counted {users} users, records name '
                           f'{backing} backings')
    med = sorted(runs['scan'].seconds)[len(runs['scan'].seconds) // 2]
    result.add(Figure(
        name='cache_manager.scan_vs_bare_io',
        description=f'cache_manager.scan: {s.cache_entries} entries, '
                    f'{s.cache_instances} instances',
        unit='s', samples=runs['scan'].seconds,
        baseline_description='bare pass: listdir + json.load of every '
                             'sidecar and records file + stat of every entry',
        baseline_samples=runs['bare'].seconds,
        context={'entries': s.cache_entries,
                 'instances': s.cache_instances,
                 'disks_naming_a_backing': backing,
                 'seconds_per_entry': med / s.cache_entries,
                 'generation_seconds': gen,
                 'commands_run_by_scan': runs['scan'].count()[0]}))


def _generate(backend, n_entries: int, n_instances: int) -> int:
    """Write the entries and records; return how many disks name a
    backing."""
    cache = backend.image_cache
    cache.ensure_dirs()
    entry_names = []
    now = time.time()
    payload = b'\0' * (DATA - 8)
    for i in range(n_entries):
        image_id = f'image-{i}'
        name = names.image_cache_name(image_id)
        path = cache.path(name)
        with open(path, 'wb') as f:
            f.write(i.to_bytes(8, 'little') + payload)
        entry = cache_mod.CacheEntry(
            name=name, path=path, format='raw', virtual_size=DATA,
            sha256='0' * 64, kind='image', source=image_id, created_at=now)
        with open(path + names.META_SUFFIX, 'w') as f:
            json.dump(entry.to_dict(), f)
        entry_names.append(name)
    backing = 0
    for j in range(n_instances):
        inst = instance_mod.Instance()
        inst_dir = os.path.join(backend.conf.instances_path, inst.uuid)
        os.makedirs(inst_dir)
        recs = []
        for k, disk in enumerate(DISKS):
            base = entry_names[(j * len(DISKS) + k) % n_entries] \
                if disk != 'disk.swap' else None
            backing += base is not None
            recs.append(records_mod.DiskRecord(
                instance=inst.uuid, name=disk, backend='qcow2',
                format='qcow2', location=os.path.join(inst_dir, disk),
                source_type='image', source_id=f'image-{j}',
                virtual_size=DATA, state=records_mod.CREATED, backing=base,
                backing_format='raw' if base else None,
                provenance={'path': 'native'}))
        with open(os.path.join(inst_dir, records_mod.RECORDS_FILE),
                  'w') as f:
            json.dump(records_mod.document(recs), f)
    return backing


def bare_scan(instances_path: str, base_dir: str) -> list[tuple]:
    """The same facts as cache_manager.scan, by plain file I/O."""
    counts: dict[str, int] = {}
    for name in os.listdir(instances_path):
        path = os.path.join(instances_path, name, records_mod.RECORDS_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                doc = json.load(f)
            for disk in doc['disks'].values():
                if disk.get('backing'):
                    counts[disk['backing']] = counts.get(disk['backing'],
                                                         0) + 1
    out = []
    for name in sorted(os.listdir(base_dir)):
        if not name.endswith(names.META_SUFFIX):
            continue
        with open(os.path.join(base_dir, name)) as f:
            meta = json.load(f)
        st = os.stat(os.path.join(base_dir, name[:-len(names.META_SUFFIX)]))
        out.append((meta['name'], counts.get(meta['name'], 0), st.st_mtime,
                    st.st_blocks * 512))
    return out
