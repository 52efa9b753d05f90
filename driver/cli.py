"""``imagebackend``: spawn, inspect, resize and migrate instance disks.

Works on a local state directory (``--state-dir``, default
``$IMAGEBACKEND_STATE_DIR`` or /var/tmp/imagebackend): an images folder
and one instances_path per host name, so two "hosts" live on one machine.
Every command prints a table for people, or JSON with ``--json``.

On a real compute host, name its configuration instead:
``imagebackend --config-file /etc/nova/nova.conf --help`` lists the
commands that look at that host (see driver/host_cli.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import secrets
import sys
import time
from oslo_utils import units

from imagebackend import backend_types
from imagebackend import cache_manager
from imagebackend import exception
from imagebackend import fileutils
from imagebackend import locks
from imagebackend import names
from imagebackend import processes
from imagebackend import qemu
from imagebackend import records as records_mod
from imagebackend import sources

from driver import cli_common
from driver import flows
from driver import host_cli
from driver import instance as instance_mod
from driver import instance_disks
from driver import migration
from driver import state as state_mod

BACKENDS = backend_types.KNOWN_TYPES


# -- output ------------------------------------------------------------------

def human(n: int | None) -> str:
    if n is None:
        return '-'
    value = float(n)
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if value < 1024 or unit == 'TiB':
            return f'{value:.0f} {unit}' if unit == 'B' else \
                f'{value:.1f} {unit}'
        value /= 1024
    return str(n)


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Rows of dicts as aligned text; columns are (key, heading)."""
    cells = [[heading for _key, heading in columns]]
    for row in rows:
        cells.append(['-' if row.get(k) is None else str(row.get(k))
                      for k, _h in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return '\n'.join('  '.join(c.ljust(w) for c, w in zip(r, widths))
                     .rstrip() for r in cells)


class Progress:
    """A progress bar on stderr for copies (a line per step if not a tty)."""

    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        pct = int(done * 100 / total) if total else 0
        if self.tty:
            bar = '#' * (pct // 4)
            self.stream.write(f'\r{self.label:<28} [{bar:<25}] {pct:3d}% '
                              f'{human(done)}/{human(total)}')
            if total and done >= total:
                self.stream.write('\n')
        elif pct in (0, 100) and pct != self._last:
            self.stream.write(f'{self.label}: {pct}% of {human(total)}\n')
        self._last = pct
        self.stream.flush()


# -- helpers -------------------------------------------------------------------

def disk_rows(backend, instance) -> list[dict]:
    """An instance's disks as its records say, with what they allocate."""
    rows = []
    for record in backend.records.list(instance.uuid):
        allocated = None
        if record.created:
            allocated = backend.from_metadata(instance,
                                              record.name).allocated_bytes()
        rows.append({'name': record.name, 'backend': record.backend,
                     'format': record.format, 'state': record.state,
                     'virtual_size': record.virtual_size,
                     'allocated': allocated, 'backing': record.backing,
                     'source': f'{record.source_type}:{record.source_id}',
                     'location': record.location,
                     'made_by': record.provenance.get('path')})
    return rows


def show_disks(rows: list[dict]) -> str:
    people = [dict(r, virtual_size=human(r['virtual_size']),
                   allocated=human(r['allocated'])) for r in rows]
    return table(people, [('name', 'DISK'), ('backend', 'BACKEND'),
                          ('format', 'FORMAT'), ('virtual_size', 'SIZE'),
                          ('allocated', 'ALLOCATED'), ('backing', 'BACKING'),
                          ('source', 'SOURCE'), ('made_by', 'MADE BY')])


def _flavor(args, current: instance_mod.Flavor | None = None
            ) -> instance_mod.Flavor:
    current = current or instance_mod.Flavor()
    return instance_mod.Flavor(
        root_gb=current.root_gb if args.root_gb is None else args.root_gb,
        ephemeral_gb=(current.ephemeral_gb if args.ephemeral_gb is None
                      else args.ephemeral_gb),
        swap=current.swap if args.swap_mb is None else args.swap_mb)


def _instance_view(instance, bdi, backend) -> dict:
    return {'uuid': instance.uuid, 'name': instance.name,
            'host': instance.host, 'image': instance.image_ref,
            'flavor': {'root_gb': instance.flavor.root_gb,
                       'ephemeral_gb': instance.flavor.ephemeral_gb,
                       'swap_mb': instance.flavor.swap},
            'disks': disk_rows(backend, instance)}


def _instance_text(view: dict) -> str:
    f = view['flavor']
    head = (f"instance {view['name']} ({view['uuid']}) on {view['host']}, "
            f"image {view['image']}, flavor root {f['root_gb']} GiB, "
            f"ephemeral {f['ephemeral_gb']} GiB, swap {f['swap_mb']} MiB")
    return head + '\n' + show_disks(view['disks'])


@contextlib.contextmanager
def _instance_locked(st, ref: str, active: bool = True):
    """Yield ``(instance, bdi)`` read again under the instance's lock on its
    host: a command decides and acts on what is true while it holds it (a
    concurrent migrate may have moved it: then lock on its new host). With
    ``active``, an instance whose spawn did not finish is refused."""
    instance, _bdi = st.find(ref)
    while True:
        host = instance.host
        with locks.instance_lock(locks.lock_dir(st.instances_path(host)),
                                 instance.uuid):
            if active:
                instance, bdi = _require_active(st, instance.uuid)
            else:
                instance, bdi = st.find(instance.uuid)
            if instance.host == host:
                yield instance, bdi
                return


# -- commands ------------------------------------------------------------------

def cmd_image_create_sample(st, args):
    names.check_disk_name(args.id)  # it becomes a file name
    path = os.path.join(st.images_dir, f'{args.id}.{args.format}')
    if os.path.exists(path):
        return {'image': args.id, 'path': path, 'created': False}, \
            f'image {args.id} already exists: {path}'
    size = _size(args.size)
    # A hidden, unique temp name next to the image: never an image itself,
    # and removed when anything fails, so no half-made file is left.
    tmp = os.path.join(st.images_dir, f'.{os.path.basename(path)}.'
                                      f'{secrets.token_hex(4)}.tmp')
    try:
        qemu.create(tmp, args.format, size)
        # A little data at the start, so copies and overlays have content.
        processes.execute('qemu-io', '-f', args.format, '-c',
                          'write -P 0xab 0 4M', tmp)
        fileutils.fsync_file(tmp)
        os.rename(tmp, path)
    except BaseException:
        fileutils.remove_path(tmp)
        raise
    fileutils.fsync_dir(st.images_dir)
    return {'image': args.id, 'path': path, 'created': True}, \
        f'made sample image {args.id} ({args.format}, {human(size)}): {path}'


def cmd_image_add(st, args):
    src = sources.DirectoryImageSource(st.images_dir)
    # The id and format are checked before a byte is written.
    src.add(args.id, args.format, args.file, copy=True)
    meta = src.get_meta(None, args.id)
    return {'image': meta.id, 'disk_format': meta.disk_format,
            'size': meta.size}, f'added image {args.id} ({args.format})'


def cmd_image_list(st, args):
    rows = []
    for name in sorted(os.listdir(st.images_dir)):
        image_id, _, fmt = name.rpartition('.')
        if fmt in sources.DISK_FORMATS:
            rows.append({'id': image_id, 'disk_format': fmt,
                         'size': os.path.getsize(os.path.join(
                             st.images_dir, name))})
    return rows, table([dict(r, size=human(r['size'])) for r in rows],
                       [('id', 'IMAGE'), ('disk_format', 'FORMAT'),
                        ('size', 'SIZE')])


def cmd_host_set(st, args):
    options = {key: getattr(args, key) for key in (
        'images_type', 'images_volume_group', 'volume_clear',
        'images_rbd_pool', 'images_rbd_ceph_conf', 'rbd_user', 'thin_pool')
        if getattr(args, key) is not None}
    if args.use_cow_images is not None:
        options['use_cow_images'] = args.use_cow_images == 'true'
    config = st.set_host_config(args.host, **options)
    return {'host': args.host, 'config': config}, \
        f'host {args.host}: ' + ', '.join(f'{k}={v}' for k, v in
                                          sorted(config.items()))


def cmd_host_list(st, args):
    rows = [{'host': h, 'instances_path': st.instances_path(h),
             'images_type': st.conf(h).libvirt.images_type}
            for h in st.hosts()]
    return rows, table(rows, [('host', 'HOST'), ('images_type', 'TYPE'),
                              ('instances_path', 'INSTANCES_PATH')])


def cmd_spawn(st, args):
    instance = instance_mod.Instance(
        name=_instance_name(args.name or 'instance'), image_ref=args.image,
        host=args.host, os_type=args.os_type, flavor=_flavor(args),
        config_drive=args.config_drive)
    bdi = {}
    if args.ephemeral_bdm:
        bdi['ephemerals'] = [{'size': gb, 'guest_format': args.bdm_format}
                             for gb in args.ephemeral_bdm]
    backend = st.backend(args.host, args.backend)  # an unknown host: error
    sources.DirectoryImageSource(st.images_dir).get_meta(None, args.image)
    mapping = instance_mod.disk_mapping(instance, bdi)
    # Every disk described (names, sizes, formats checked) before anything
    # is written; describing creates nothing.
    list(instance_disks.instance_disks(backend, instance, mapping, bdi))
    start = time.monotonic()
    # Saved before any disk is made: a spawn that dies is listed (building)
    # and `delete` finds its disks; never a disk nobody knows of.
    with flows.instance_lock(backend, instance):
        st.save(instance, bdi, status=state_mod.BUILDING)
        try:
            created = flows.spawn(backend, None, instance, mapping, bdi)
        except BaseException:
            _forget_if_empty(st, backend, instance)
            raise
        st.save(instance, bdi)
    view = _instance_view(instance, bdi, backend)
    view['created'] = created
    view['seconds'] = round(time.monotonic() - start, 3)
    return view, (f'spawned in {view["seconds"]:.2f} s\n' +
                  _instance_text(view))


def _instance_name(name: str) -> str:
    """An instance name: shown in tables and matched by commands."""
    if not name.strip() or not name.isprintable() or len(name) > 255:
        raise exception.InvalidInput(
            reason=f'instance name {name!r} must be 1-255 printable '
                   'characters')
    return name


def _forget_if_empty(st, backend, instance) -> None:
    """After a failed spawn: drop the definition unless disks or records
    remain (the flow removes what it made; anything left stays listed)."""
    try:
        if backend.records.list(instance.uuid) or os.path.exists(
                os.path.join(backend.conf.instances_path, instance.uuid)):
            return
        st.forget(instance)
    except Exception:  # never hide the spawn's own error
        pass


def _require_active(st, ref):
    """The instance ``ref`` if its spawn finished, else InvalidInput."""
    instance, bdi, status = st.find_entry(ref)
    if status != state_mod.ACTIVE:
        raise exception.InvalidInput(
            reason=f'instance {instance.name} ({instance.uuid}) is '
                   f'{status}: its spawn did not finish; delete it')
    return instance, bdi


def cmd_list(st, args):
    rows = []
    for instance, _bdi, status in st.entries():
        rows.append({'uuid': instance.uuid, 'name': instance.name,
                     'host': instance.host, 'image': instance.image_ref,
                     'status': status,
                     'flavor': f'{instance.flavor.root_gb}/'
                               f'{instance.flavor.ephemeral_gb}/'
                               f'{instance.flavor.swap}'})
    return rows, table(rows, [('name', 'NAME'), ('uuid', 'UUID'),
                              ('host', 'HOST'), ('status', 'STATUS'),
                              ('image', 'IMAGE'),
                              ('flavor', 'ROOT/EPH GiB / SWAP MiB')])


def cmd_show(st, args):
    instance, bdi, status = st.find_entry(args.instance)
    view = _instance_view(instance, bdi, st.backend(instance.host))
    view['status'] = status
    return view, _instance_text(view)


def cmd_resize(st, args):
    """A resize on the same host: grow disks in place, recreate swap."""
    with _instance_locked(st, args.instance) as (instance, bdi):
        backend = st.backend(instance.host)
        old = instance.flavor
        instance.flavor = _flavor(args, old)
        mapping = instance_mod.disk_mapping(instance, bdi)
        done = flows.finish_migration(backend, None, instance, mapping, bdi)
        st.save(instance, bdi)
    view = _instance_view(instance, bdi, backend)
    view['changes'] = done
    return view, (f"resized: grown {done['grown'] or 'nothing'}, created "
                  f"{done['created'] or 'nothing'}\n" + _instance_text(view))


def cmd_migrate(st, args):
    """Cold migration (optionally with a new flavor) to another host."""
    with _instance_locked(st, args.instance) as (instance, bdi):
        return _migrate(st, args, instance, bdi)


def _migrate(st, args, instance, bdi):
    source_host = instance.host
    if args.to == source_host:
        raise exception.InvalidInput(reason='the instance is already on '
                                            f'host {args.to}')
    st.check_host(args.to)  # an unknown host is an error, never made
    source = st.backend(source_host)
    transport = st.transport()
    mapping = instance_mod.disk_mapping(instance, bdi)
    new = dataclasses.replace(instance, flavor=_flavor(args, instance.flavor),
                              host=args.to)
    new_mapping = instance_mod.disk_mapping(new, bdi)
    _check_no_shrink(source, instance, new)
    start = time.monotonic()
    copied = migration.migrate_disks(
        source, instance, mapping, args.to, transport, bdi,
        progress=None if args.json else (
            lambda name: Progress(f'{name} -> {args.to}')))
    dest = st.backend(args.to)
    done = flows.finish_migration(dest, None, new, new_mapping, bdi,
                                  source_host=source_host)
    flows.confirm_migration(source, instance)
    # Disks on shared storage are the destination's now: only forgotten.
    flows.cleanup_migration_source(source, instance)
    _rmdir(os.path.join(st.instances_path(source_host), instance.uuid))
    st.save(new, bdi)
    view = _instance_view(new, bdi, dest)
    view.update(copied=copied, changes=done, source_host=source_host,
                seconds=round(time.monotonic() - start, 3))
    return view, (f'migrated {source_host} -> {args.to} in '
                  f'{view["seconds"]:.2f} s (copied {copied or "nothing"}; '
                  f"grown {done['grown'] or 'nothing'}; created "
                  f"{done['created'] or 'nothing'})\n" + _instance_text(view))


def _check_no_shrink(backend, instance, new) -> None:
    """Refuse a flavor shrink before copying anything."""
    for record in backend.records.list(instance.uuid):
        want = {'disk': new.flavor.root_gb * units.Gi,
                'disk.local': new.flavor.ephemeral_gb * units.Gi}.get(
                    record.name)
        flows.check_no_shrink(record.location, record.virtual_size, want)


def cmd_live_migrate_prepare(st, args):
    """pre_live_migration on the destination: make its disks ready."""
    with _instance_locked(st, args.instance) as (instance, bdi):
        source = st.backend(instance.host)
        dest = st.backend(args.to)
        records = source.records.list(instance.uuid)
        mapping = instance_mod.disk_mapping(instance, bdi)
        created = flows.pre_live_migration(dest, None, instance, mapping,
                                           records, bdi,
                                           source_host=instance.host)
    rows = disk_rows(dest, instance)
    return {'instance': instance.uuid, 'host': args.to, 'created': created,
            'disks': rows}, (
        f'prepared {len(created)} disks on {args.to} for a block live '
        f'migration of {instance.name}\n' + show_disks(rows))


def cmd_rescue(st, args):
    with _instance_locked(st, args.instance) as (instance, _bdi):
        backend = st.backend(instance.host)
        created = flows.rescue(backend, None, instance, args.image)
    return {'created': created, 'disks': disk_rows(backend, instance)}, \
        f'rescue disks created: {created}'


def cmd_unrescue(st, args):
    with _instance_locked(st, args.instance, active=False) as (instance, _bdi):
        deleted = flows.unrescue(st.backend(instance.host), instance)
    return {'deleted': deleted}, f'rescue disks deleted: {deleted}'


def cmd_delete(st, args):
    with _instance_locked(st, args.instance, active=False) as (instance,
                                                               bdi):
        backend = st.backend(instance.host)
        # Records say what to delete; storage they do not describe is
        # refused before anything is deleted (it may be a disk whose
        # disks.json is gone).
        unknown = _unrecorded(backend, instance, bdi)
        if unknown:
            raise exception.UnrecordedDisk(location=', '.join(unknown),
                                           instance=instance.uuid,
                                           action='delete')
        deleted = flows.destroy_disks(backend, instance)
        inst_dir = os.path.join(st.instances_path(instance.host),
                                instance.uuid)
        _remove_partials(inst_dir, deleted)
        _rmdir(inst_dir)
        st.forget(instance)
    return {'deleted': deleted}, f'deleted {instance.name}: {deleted}'


# Nova's per-instance formats file: metadata about disks, not a disk.
LEGACY_DISK_INFO = 'disk.info'


def _partial_of(filename: str) -> str | None:
    """The disk (or records file) a leftover temporary file belongs to:
    ``X.part``, ``X.converted.part`` (a fetch into a disk), a transport
    staging directory ``.X.<random>.part``, ``.X.<random>.tmp`` (an atomic
    write)."""
    if filename.startswith('.'):
        for tail in (names.PART_SUFFIX, '.tmp'):
            if filename.endswith(tail):
                return filename[1:-len(tail)].rpartition('.')[0] or None
        return None
    for tail in ('.converted' + names.PART_SUFFIX, names.PART_SUFFIX):
        if filename.endswith(tail):
            return filename[:-len(tail)]
    return None


def _unrecorded(backend, instance, bdi) -> list[str]:
    """What the instance has on storage that no disk record describes:
    files in its directory, and disks its mapping names elsewhere (an LV,
    an RBD image) on the host's backend."""
    records = {r.name for r in backend.records.list(instance.uuid)}
    inst_dir = os.path.join(backend.conf.instances_path, instance.uuid)
    found = []
    try:
        listing = sorted(os.listdir(inst_dir))
    except FileNotFoundError:
        listing = []
    for filename in listing:
        owner = _partial_of(filename) or filename
        if owner not in records and owner not in (records_mod.RECORDS_FILE,
                                                  LEGACY_DISK_INFO):
            found.append(os.path.join(inst_dir, filename))
    wanted = set(instance_mod.disk_mapping(instance, bdi)) | set(
        instance_mod.rescue_mapping(instance))
    for name in sorted(wanted - records):
        try:
            disk = backend.by_name(instance, name)
            if disk.capabilities.file_in_instance_path:
                continue  # files were looked at above
            if disk.exists():
                found.append(disk.location)
        except exception.ImageBackendError:
            continue  # the host's backend cannot be asked: nothing to see
    return found


def _remove_partials(inst_dir: str, deleted: list[str]) -> None:
    """Temporary files a killed creation left beside disks now deleted."""
    try:
        listing = os.listdir(inst_dir)
    except FileNotFoundError:
        return
    for filename in listing:
        if _partial_of(filename) in set(deleted) | {records_mod.RECORDS_FILE} \
                or filename == LEGACY_DISK_INFO:
            fileutils.remove_path(os.path.join(inst_dir, filename))


def cmd_cache_list(st, args):
    backend = st.backend(args.host)
    rows = [{'name': u.entry.name, 'kind': u.entry.kind,
             'source': u.entry.source, 'format': u.entry.format,
             'virtual_size': u.entry.virtual_size, 'allocated': u.allocated,
             'users': u.users, 'provenance': u.entry.provenance,
             'last_used': time.strftime('%Y-%m-%d %H:%M:%S',
                                        time.localtime(u.last_used))}
            for u in cache_manager.scan(backend)]
    people = [dict(r, virtual_size=human(r['virtual_size']),
                   allocated=human(r['allocated'])) for r in rows]
    return rows, table(people, [
        ('name', 'ENTRY'), ('kind', 'KIND'), ('source', 'SOURCE'),
        ('format', 'FORMAT'), ('virtual_size', 'SIZE'),
        ('allocated', 'ALLOCATED'), ('users', 'DISKS'),
        ('provenance', 'HOW'), ('last_used', 'LAST USED')])


def cmd_cache_verify(st, args):
    """Exit 1 if any entry has a problem (digest mismatch, data or sidecar
    missing, sidecar unreadable), listing each."""
    status = cache_manager.check(st.backend(args.host), args.name)
    result = {n: s == cache_manager.OK for n, s in status.items()}
    bad = sorted(n for n, ok in result.items() if not ok)
    text = table([{'name': n, 'status': s} for n, s in sorted(status.items())],
                 [('name', 'ENTRY'), ('status', 'STATUS')])
    return {'entries': result, 'status': status, 'bad': bad}, text, \
        (1 if bad else 0)


def cmd_cache_clean(st, args):
    removed = cache_manager.clean(st.backend(args.host), args.min_age,
                                  dry_run=args.dry_run)
    verb = 'would remove' if args.dry_run else 'removed'
    return {'removed': removed, 'dry_run': args.dry_run}, \
        f'{verb} {len(removed)} unused entries' + ''.join(
            f'\n  {n}' for n in removed)


# -- argument parsing ----------------------------------------------------------

def _size(text: str) -> int:
    text = text.strip().upper()
    mult = {'K': units.Ki, 'M': units.Mi, 'G': units.Gi, 'T': units.Ti}
    if text and text[-1] in mult:
        return int(float(text[:-1]) * mult[text[-1]])
    return int(text)


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _flavor_args(p: argparse.ArgumentParser, defaults: bool) -> None:
    d = (lambda v: v) if defaults else (lambda v: None)
    p.add_argument('--root-gb', type=cli_common.count, default=d(1),
                   help='root disk size in GiB (0: the image\'s size)')
    p.add_argument('--ephemeral-gb', type=cli_common.count, default=d(0),
                   help='flavor ephemeral disk (disk.local) in GiB')
    p.add_argument('--swap-mb', type=cli_common.count, default=d(0),
                   help='swap disk size in MiB')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='imagebackend', description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--state-dir', default=os.environ.get(
        'IMAGEBACKEND_STATE_DIR', state_mod.DEFAULT_STATE_DIR),
        help='images, hosts and instances live here (default: %(default)s)')
    parser.add_argument('--json', action='store_true',
                        help='print JSON for scripts instead of tables')
    sub = parser.add_subparsers(dest='command', required=True,
                                metavar='COMMAND')

    def command(name, func, help_text, **kw):
        p = sub.add_parser(name, help=help_text, description=help_text, **kw)
        p.set_defaults(func=func)
        return p

    image = command('image', None, 'manage the image folder')
    isub = image.add_subparsers(dest='image_command', required=True,
                                metavar='ACTION')
    p = isub.add_parser('create-sample', help='make a sample image with '
                        'qemu-img (idempotent)')
    p.add_argument('id', nargs='?', default='demo-image')
    p.add_argument('--size', default='256M', help='virtual size, e.g. 1G')
    p.add_argument('--format', default='qcow2', choices=['qcow2', 'raw'])
    p.set_defaults(func=cmd_image_create_sample)
    p = isub.add_parser('add', help='add a file as image ID with a '
                        'declared format (never guessed)')
    p.add_argument('id')
    p.add_argument('file')
    p.add_argument('--format', required=True, choices=sources.DISK_FORMATS)
    p.set_defaults(func=cmd_image_add)
    p = isub.add_parser('list', help='list images')
    p.set_defaults(func=cmd_image_list)

    host = command('host', None, 'configure hosts (each a directory)')
    hsub = host.add_subparsers(dest='host_command', required=True,
                               metavar='ACTION')
    p = hsub.add_parser('set', help='set a host\'s storage config')
    p.add_argument('host')
    p.add_argument('--images-type', choices=BACKENDS)
    p.add_argument('--use-cow-images', choices=['true', 'false'])
    p.add_argument('--images-volume-group', metavar='VG',
                   help='LVM volume group for the lvm backend')
    p.add_argument('--thin-pool', metavar='LV',
                   help='an LVM thin pool in that VG (copy-free disks)')
    p.add_argument('--volume-clear', choices=['none', 'zero', 'shred'],
                   help='how LVs are wiped on delete')
    p.add_argument('--images-rbd-pool', metavar='POOL',
                   help='Ceph pool for the rbd backend')
    p.add_argument('--images-rbd-ceph-conf', metavar='PATH',
                   help='ceph.conf of the cluster')
    p.add_argument('--rbd-user', metavar='USER')
    p.set_defaults(func=cmd_host_set)
    p = hsub.add_parser('list', help='list hosts')
    p.set_defaults(func=cmd_host_list)

    p = command('spawn', cmd_spawn, 'create an instance\'s local disks')
    p.add_argument('--image', required=True, help='image id')
    p.add_argument('--name', help='instance name')
    p.add_argument('--host', default=state_mod.DEFAULT_HOST,
                   help='host name, made with `host set` (default: '
                        '%(default)s, made on first use)')
    p.add_argument('--backend', choices=BACKENDS,
                   help='images_type for this spawn (default: the host\'s)')
    p.add_argument('--os-type', default='linux',
                   help='picks the ephemeral filesystem (linux: ext4, '
                        'windows: ntfs, else vfat)')
    p.add_argument('--ephemeral-bdm', type=cli_common.count, action='append',
                   metavar='GB', help='an extra ephemeral disk (repeatable)')
    p.add_argument('--bdm-format', default='ext4',
                   help='filesystem of --ephemeral-bdm disks')
    p.add_argument('--config-drive', action='store_true',
                   help='also build a config drive')
    _flavor_args(p, defaults=True)

    p = command('list', cmd_list, 'list instances')
    p = command('show', cmd_show, 'an instance\'s disks, from their records')
    p.add_argument('instance', help='uuid, uuid prefix or name')
    p = command('resize', cmd_resize, 'grow an instance\'s disks in place '
                '(shrinking is refused)')
    p.add_argument('instance')
    _flavor_args(p, defaults=False)
    p = command('migrate', cmd_migrate, 'cold-migrate an instance to '
                'another host, optionally with a new flavor')
    p.add_argument('instance')
    p.add_argument('--to', required=True, help='destination host')
    _flavor_args(p, defaults=False)
    p = command('live-migrate-prepare', cmd_live_migrate_prepare,
                'prepare a destination for a block live migration')
    p.add_argument('instance')
    p.add_argument('--to', required=True)
    p = command('rescue', cmd_rescue, 'create rescue disks')
    p.add_argument('instance')
    p.add_argument('--image', help='rescue image (default: the '
                   'instance\'s image)')
    p = command('unrescue', cmd_unrescue, 'delete rescue disks')
    p.add_argument('instance')
    p = command('delete', cmd_delete, 'delete an instance and its disks')
    p.add_argument('instance')

    cache = command('cache', None, 'inspect and clean a host\'s image cache')
    csub = cache.add_subparsers(dest='cache_command', required=True,
                                metavar='ACTION')
    for name, func, text in (
            ('list', cmd_cache_list, 'entries, their users and age'),
            ('verify', cmd_cache_verify,
             'recompute the digest of entries; exit 1 on any problem'),
            ('clean', cmd_cache_clean, 'remove unused entries')):
        p = csub.add_parser(name, help=text, description=text)
        p.add_argument('--host', default=state_mod.DEFAULT_HOST)
        p.set_defaults(func=func)
        if name == 'verify':
            p.add_argument('name', nargs='?', help='one entry only')
        if name == 'clean':
            p.add_argument('--min-age', type=float, default=None,
                           help='seconds unused (default: [image_cache] '
                                'remove_unused_original_minimum_age_seconds)')
            p.add_argument('--dry-run', action='store_true')
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if host_cli.wanted(argv):
        return host_cli.main(argv)
    args = build_parser().parse_args(argv)
    try:
        st = state_mod.State(args.state_dir)
        result = args.func(st, args)
    except exception.ImageBackendError as e:
        return cli_common.fail(args, type(e).__name__, e.message)
    except OSError as e:
        return cli_common.fail(args, type(e).__name__, str(e))
    data, text = result[0], result[1]
    code = result[2] if len(result) > 2 else 0
    cli_common.emit(args, data, text)
    return code


if __name__ == '__main__':
    sys.exit(main())
