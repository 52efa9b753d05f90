"""imagebackend.instance_dirs: which directories are instances, which
files are disks (real files in tmp_path; no tools run)."""

import json
import uuid as uuid_mod

from imagebackend import instance_dirs


def test_only_uuid_named_directories_are_instances(tmp_path):
    uuids = sorted(str(uuid_mod.uuid4()) for _ in range(2))
    for name in uuids + ['_base', 'locks', f'{uuids[0]}_resize', 'junk']:
        (tmp_path / name).mkdir()
    (tmp_path / str(uuid_mod.uuid4())).write_text('a file, not a dir')
    assert instance_dirs.instance_uuids(str(tmp_path)) == uuids
    assert instance_dirs.instance_uuids(str(tmp_path / 'absent')) == []


def test_disk_names_are_novas():
    for name in ('disk', 'disk.local', 'disk.swap', 'disk.config',
                 'disk.eph0', 'disk.eph12', 'disk.rescue',
                 'disk.config.rescue', 'kernel', 'ramdisk', 'kernel.rescue'):
        assert instance_dirs.is_disk_name(name), name
    for name in ('disk.info', 'disk.info.tmp', 'disks.json', 'console.log',
                 'libvirt.xml', 'disk.ephx', 'diskette', 'disk.local.part'):
        assert not instance_dirs.is_disk_name(name), name


def test_disk_files_and_disk_info_entries(tmp_path):
    d = tmp_path / 'inst'
    d.mkdir()
    for name in ('disk', 'disk.local', 'console.log', 'disks.json',
                 'odd-disk'):
        (d / name).write_bytes(b'')
    (d / 'disk.info').write_text(json.dumps({
        str(d / 'disk'): 'qcow2',
        str(d / 'odd-disk'): 'raw',          # listed: a disk, whatever
        str(d / 'gone'): 'raw',              # listed, but not there
        str(tmp_path / 'other' / 'disk'): 'raw',   # another directory's
    }))
    assert instance_dirs.listed_in_disk_info(str(d)) == {
        'disk': 'qcow2', 'odd-disk': 'raw', 'gone': 'raw'}
    assert instance_dirs.disk_files(str(d)) == ['disk', 'disk.local',
                                                'odd-disk']
    assert instance_dirs.disk_files(str(tmp_path / 'absent')) == []


def test_disk_files_are_nova_disk_names(tmp_path):
    for name in ('disk', 'disk.local', 'disk.eph0', 'disk.swap',
                 'disk.config', 'disk.rescue', 'kernel', 'ramdisk',
                 'disk.info', 'disk.info.tmp', 'disks.json', 'console.log',
                 'libvirt.xml', 'disk.part', 'disk.fallocate_test'):
        (tmp_path / name).write_bytes(b'{}' if name == 'disk.info' else b'')
    assert instance_dirs.disk_files(str(tmp_path)) == [
        'disk', 'disk.config', 'disk.eph0', 'disk.local', 'disk.rescue',
        'disk.swap', 'kernel', 'ramdisk']


def test_resize_dirs_are_uuid_resize_directories(tmp_path):
    uuid = '8d1bd54c-8e5c-4b07-9bb0-8d0d0b0d1f6e'
    for name in (uuid, uuid + '_resize', 'x_resize', '_base'):
        (tmp_path / name).mkdir()
    (tmp_path / (uuid[:-1] + '0_resize')).write_bytes(b'')
    assert instance_dirs.resize_dirs(str(tmp_path)) == [uuid + '_resize']
