"""Records are the only truth about an existing disk (issue 9, points 4, 7,
10): real qemu-img images, real files, two hosts on one machine.

* A Qcow2 disk made through Nova's legacy ``cache()`` over a qcow2 base
  records the base's format; a cold migration rebases onto ``-F qcow2``.
* A disk without record or disk.info is adopted as raw: a qcow2 header the
  guest wrote into its first sector (naming a host file as backing) is data.
* A symlink in the images folder to a host file is refused.
* A deleted base restored from an image id whose bytes changed is refused;
  the disk is untouched.

The Lvm case (point 6) is in test_lvm_records.py (real LVM, under the lock).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

import imagebackend
from imagebackend import exception
from imagebackend import fileutils
from imagebackend import names
from imagebackend import processes

from driver import flows
from driver import instance as instance_mod
from driver import migration
from tests.functional.conftest import qemu_info, run
from tests.functional.test_flows import Hosts
from tests.hosts import GiB, MiB

SECRET = b'root:$6$host-secret-hash-do-not-leak:19000:0:99999:7:::\n'


@pytest.fixture
def hosts(tmp_path):
    return Hosts(tmp_path)


def image(hosts, image_id: str, pattern: int, fmt: str = 'qcow2') -> str:
    path = os.path.join(hosts.images, f'{image_id}.{fmt}')
    tmp = path + '.new'
    run('qemu-img', 'create', '-q', '-f', fmt, tmp, str(64 * MiB))
    run('qemu-io', '-f', fmt, '-c', f'write -P {pattern} 0 1M',
        '-c', f'write -P {pattern} {8 * MiB} 64k', tmp)
    os.replace(tmp, path)
    return path


def files_under(*roots):
    for root in roots:
        for d, _dirs, files in os.walk(root):
            for n in files:
                yield os.path.join(d, n)


def assert_secret_nowhere(*roots):
    for path in files_under(*roots):
        if os.path.islink(path):
            continue
        assert SECRET not in allocated_bytes(path), path


def allocated_bytes(path: str) -> bytes:
    """The file's data extents (holes skipped: they read as zeros)."""
    chunks = []
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        offset = 0
        while offset < end:
            try:
                offset = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after offset
                break
            hole = os.lseek(fd, offset, os.SEEK_HOLE)
            chunks.append(os.pread(fd, hole - offset, offset))
            offset = hole
    finally:
        os.close(fd)
    return b''.join(chunks)


# -- point 4: the legacy path records the base's real format -----------------

def _qcow2_hosts(hosts):
    """Image 'img' (qcow2), both hosts on qcow2 disks over unconverted
    bases; return (image path, host a's backend, instance, mapping)."""
    src = image(hosts, 'img', 0xab)
    for conf in hosts.confs.values():
        conf.set_override('force_raw_images', False)
        conf.set_override('images_type', 'qcow2', group='libvirt')
    a = hosts.backend('a')
    instance = instance_mod.Instance(image_ref='img', name='vm',
                                     flavor=instance_mod.Flavor(root_gb=1))
    mapping = instance_mod.disk_mapping(instance, {})
    return src, a, instance, mapping

def test_legacy_qcow2_over_qcow2_base_migrates_with_its_format(hosts):
    # Nova's legacy fetch_func writes the image as it is (qcow2) into
    # _base, with no sidecar; with force_raw_images off both hosts keep the
    # qcow2 base, so the disk depends on a qcow2 backing file.
    src, a, instance, mapping = _qcow2_hosts(hosts)

    def fetch(target, context=None, image_id=None, **_kw):
        shutil.copyfile(src, target)

    disk = a.by_name(instance, 'disk', disk_info_mapping=mapping['disk'])
    disk.cache(fetch_func=fetch, filename=names.image_cache_name('img'),
               size=GiB, context=None, image_id='img')
    record = a.records.get(instance.uuid, 'disk')

    migration.migrate_disks(a, instance, mapping, 'b', hosts.transport, {})
    b = hosts.backend('b')
    with processes.recording() as commands:
        flows.finish_migration(b, None, instance, mapping, {},
                               source_host='a')
    moved = b.records.get(instance.uuid, 'disk')
    rebases = [c for c in commands if c[:2] == ('qemu-img', 'rebase')]
    assert len(rebases) == 1 and '-F' in rebases[0]
    assert rebases[0][rebases[0].index('-F') + 1] == 'qcow2'
    info = qemu_info(moved.location, 'qcow2')
    assert info['backing-filename-format'] == 'qcow2'
    assert info['full-backing-filename'] == os.path.join(
        hosts.paths['b'], '_base', record.backing)
    # The guest on b reads exactly the image (the rest zeros).
    run('qemu-img', 'compare', '-f', 'qcow2', '-F', 'qcow2', moved.location,
        src)
    run('qemu-img', 'check', '-f', 'qcow2', moved.location)
    assert record.provenance['path'] == 'legacy-cache'
    for r in (record, moved):
        assert (r.backing, r.backing_format) == (
            names.image_cache_name('img'), 'qcow2')
        assert r.backing_sha256 == fileutils.file_digest(src)


def test_settle_of_record_without_backing_format_never_guesses_raw(hosts):
    # A record an older release wrote for a legacy disk: backing_format
    # None. The destination rebases with the format its own sidecar of the
    # base says, or refuses; never "raw" by default.
    src, a, instance, mapping = _qcow2_hosts(hosts)
    a.by_name(instance, 'disk').create_from_image(None, 'img', GiB)
    migration.migrate_disks(a, instance, mapping, 'b', hosts.transport, {})
    records_file = os.path.join(hosts.paths['b'], instance.uuid,
                                'disks.json')
    with open(records_file) as f:
        doc = json.load(f)
    doc['disks']['disk']['backing_format'] = None
    doc['disks']['disk'].pop('backing_sha256', None)
    with open(records_file, 'w') as f:
        json.dump(doc, f)
    disk_b = os.path.join(hosts.paths['b'], instance.uuid, 'disk')
    before = fileutils.sha256_file(disk_b)
    b = hosts.backend('b')
    with pytest.raises(exception.CorruptRecord):
        flows.finish_migration(b, None, instance, mapping, {},
                               source_host='a')
    assert fileutils.sha256_file(disk_b) == before

    b.image_cache.fetch_image(None, 'img')  # b's own copy, with sidecar
    flows.finish_migration(b, None, instance, mapping, {}, source_host='a')
    assert b.records.get(instance.uuid, 'disk').backing_format == 'qcow2'
    assert qemu_info(disk_b, 'qcow2')['backing-filename-format'] == 'qcow2'
    run('qemu-img', 'compare', '-f', 'qcow2', '-F', 'qcow2', disk_b, src)


def test_legacy_base_whose_format_cannot_be_told_is_refused(host):
    # A fetch_func that writes bytes no inspector recognises safely: the
    # disk's backing format cannot be known, so no disk and no record.
    a = imagebackend.Backend(conf=host)
    host.set_override('images_type', 'qcow2', group='libvirt')
    instance = instance_mod.Instance()

    def fetch(target, context=None, image_id=None, **_kw):
        with open(target, 'wb') as f:
            # A qcow2 magic with a nonsense header: not raw, not qcow2.
            f.write(b'QFI\xfb' + b'\xff' * 508)

    disk = a.by_name(instance, 'disk')
    with pytest.raises(exception.ImageUnacceptable):
        disk.cache(fetch_func=fetch, filename=names.image_cache_name('x'),
                   size=GiB, context=None, image_id='x')
    assert not disk.exists()
    assert a.records.get(instance.uuid, 'disk') is None


# -- point 7: no record, no disk.info: raw, whatever the header says ---------

def guest_writes_qcow2_header(disk_path: str, backing: str, tmp_path):
    """Write into the disk's first clusters what a guest can: the start of
    a qcow2 image whose header names ``backing`` as its backing file."""
    evil = str(tmp_path / 'evil.qcow2')
    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
        backing, evil, str(GiB))
    with open(evil, 'rb') as f:
        header = f.read()
    assert backing.encode() in header
    run('qemu-io', '-f', 'raw', '-c', f'write -P 0 0 {len(header)}',
        disk_path)
    with open(disk_path, 'r+b') as f:
        f.write(header)
        os.fsync(f.fileno())
    # What qemu would make of it, if it were asked to guess.
    assert qemu_info(disk_path, 'qcow2')['backing-filename'] == backing
    return header


def test_recordless_disk_with_guest_qcow2_header_is_adopted_raw(hosts,
                                                               tmp_path):
    secret = tmp_path / 'host-secret'
    secret.write_bytes(SECRET * 100)
    image(hosts, 'img', 0xab)
    instance = instance_mod.Instance(image_ref='img', name='vm',
                                     flavor=instance_mod.Flavor(root_gb=1))
    mapping = instance_mod.disk_mapping(instance, {})
    a = hosts.backend('a')
    hosts.confs['a'].set_override('images_type', 'flat', group='libvirt')
    assert flows.spawn(a, None, instance, mapping, {}) == ['disk']
    path = a.records.get(instance.uuid, 'disk').location
    header = guest_writes_qcow2_header(path, str(secret), tmp_path)
    # disks.json is lost, and disk.info with it (the library keeps it in
    # step: it lists the disk as raw); the host's config now says qcow2.
    os.unlink(os.path.join(hosts.paths['a'], instance.uuid, 'disks.json'))
    os.unlink(os.path.join(hosts.paths['a'], instance.uuid, 'disk.info'))
    hosts.confs['a'].clear_override('images_type', group='libvirt')
    a = hosts.backend('a')

    # The CLI's resize: a bigger flavor through finish_migration.
    instance.flavor = instance_mod.Flavor(root_gb=2)
    with processes.recording() as commands:
        done = flows.finish_migration(a, None, instance, mapping, {})
    assert done['grown'] == ['disk']
    record = a.records.get(instance.uuid, 'disk')
    assert (record.backend, record.format) == ('flat', 'raw')
    assert (record.backing, record.backing_format) == (None, None)
    assert record.provenance == {'path': 'adopted',
                                 'from': 'raw: not in disk.info'}
    assert record.virtual_size == 2 * GiB
    # Never opened as qcow2, never read through the header's backing file.
    for cmd in commands:
        assert str(secret) not in cmd
        assert not ('-f' in cmd and cmd[cmd.index('-f') + 1] == 'qcow2')
    assert os.path.getsize(path) == 2 * GiB
    with open(path, 'rb') as f:
        assert f.read(len(header)) == header  # the guest's bytes, as data
    assert secret.read_bytes() == SECRET * 100
    assert_secret_nowhere(hosts.paths['a'], hosts.images)
    # Migrating it carries no backing file either.
    migration.migrate_disks(a, instance, mapping, 'b', hosts.transport, {})
    flows.finish_migration(hosts.backend('b'), None, instance, mapping, {},
                           source_host='a')
    assert hosts.backend('b').records.get(instance.uuid, 'disk').backing \
        is None
    assert_secret_nowhere(hosts.paths['b'])


def test_disk_info_qcow2_with_backing_outside_cache_is_refused(hosts,
                                                               tmp_path):
    # Even where disk.info says qcow2, a backing file outside this host's
    # image cache is never taken into a record.
    secret = tmp_path / 'host-secret'
    secret.write_bytes(SECRET)
    instance = instance_mod.Instance()
    inst_dir = os.path.join(hosts.paths['a'], instance.uuid)
    os.makedirs(inst_dir)
    path = os.path.join(inst_dir, 'disk')
    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
        str(secret), path, str(GiB))
    with open(os.path.join(inst_dir, 'disk.info'), 'w') as f:
        json.dump({path: 'qcow2'}, f)
    with pytest.raises(exception.ImageUnacceptable):
        hosts.backend('a').from_metadata(instance, 'disk')
    assert hosts.backend('a').records.list(instance.uuid) == []


# -- point 7: a symlink out of the images folder -------------------------------

@pytest.mark.parametrize('image_type', ['flat', 'qcow2'])
def test_symlink_out_of_images_folder_is_refused(hosts, tmp_path,
                                                 image_type):
    secret = tmp_path / 'host-secret'
    secret.write_bytes(SECRET * 1000)
    os.symlink(str(secret), os.path.join(hosts.images, 'evil.raw'))
    a = hosts.backend('a')
    instance = instance_mod.Instance()
    disk = a.by_name(instance, 'disk', image_type)
    with pytest.raises(exception.ImageUnacceptable):
        disk.create_from_image(None, 'evil', GiB)
    with pytest.raises(exception.ImageUnacceptable):
        a.source.get_meta(None, 'evil')
    assert not disk.exists()
    assert a.records.list(instance.uuid) == []
    base = os.path.join(hosts.paths['a'], '_base')
    assert not os.path.isdir(base) or os.listdir(base) == []
    assert_secret_nowhere(hosts.paths['a'])


def test_symlink_inside_images_folder_still_works(hosts):
    src = image(hosts, 'real', 0xcd)
    os.symlink(os.path.basename(src), os.path.join(hosts.images,
                                                   'alias.qcow2'))
    a = hosts.backend('a')
    disk = a.by_name(instance_mod.Instance(), 'disk', 'flat')
    disk.create_from_image(None, 'alias', GiB)
    run('qemu-img', 'compare', '-f', 'raw', '-F', 'qcow2', disk.path, src)


# -- point 10: a restored base must be the bytes the disk was made on ---------

def test_restoring_base_from_changed_image_is_refused(hosts, tmp_path):
    src = image(hosts, 'img', 0xab)
    original = tmp_path / 'img.orig'
    shutil.copyfile(src, original)
    a = hosts.backend('a')
    instance = instance_mod.Instance()
    disk = a.by_name(instance, 'disk', 'qcow2')
    disk.create_from_image(None, 'img', GiB)
    run('qemu-io', '-f', 'qcow2', '-c', f'write -P 0x77 {16 * MiB} 64k',
        disk.path)
    record = a.records.get(instance.uuid, 'disk')
    made_on = a.image_cache.get(record.backing).sha256
    before = (fileutils.sha256_file(disk.path), os.stat(disk.path).st_mtime_ns)

    # The base is deleted; the image id now has other bytes upstream.
    a.image_cache.remove(record.backing)
    image(hosts, 'img', 0x11)
    disk = a.from_metadata(instance, 'disk')
    with pytest.raises(exception.ImageUnacceptable) as e:
        disk.check_backing_from_image(None, 'img')
    assert record.backing in str(e.value) and disk.location in str(e.value)
    assert (fileutils.sha256_file(disk.path),
            os.stat(disk.path).st_mtime_ns) == before
    # The wrong bytes are not left where the disk looks for its base.
    assert not os.path.exists(a.image_cache.path(record.backing))
    assert a.image_cache.get(record.backing) is None

    # With the image's original bytes back, the base is restored.
    shutil.copyfile(original, src)
    disk.check_backing_from_image(None, 'img')
    assert a.image_cache.get(record.backing).sha256 == made_on == \
        record.backing_sha256
    run('qemu-img', 'check', '-f', 'qcow2', disk.path)
    assert fileutils.sha256_file(disk.path) == before[0]


def test_pre_live_migration_refuses_a_base_with_other_bytes(hosts):
    # The image's bytes changed upstream after the instance was made on a:
    # b would fetch the new bytes and lay the guest's writes over them.
    image(hosts, 'img', 0xab)
    a = hosts.backend('a')
    instance = instance_mod.Instance(image_ref='img', name='vm',
                                     flavor=instance_mod.Flavor(root_gb=1))
    mapping = instance_mod.disk_mapping(instance, {})
    a.by_name(instance, 'disk', 'qcow2').create_from_image(None, 'img', GiB)
    records = a.records.list(instance.uuid)
    image(hosts, 'img', 0x11)

    b = hosts.backend('b')
    with pytest.raises(exception.ImageUnacceptable) as e:
        flows.pre_live_migration(b, None, instance, mapping, records, {},
                                 source_host='a')
    assert records[0].backing_sha256 in str(e.value)
    assert b.records.list(instance.uuid) == []
    assert not os.path.exists(os.path.join(hosts.paths['b'], instance.uuid,
                                           'disk'))
