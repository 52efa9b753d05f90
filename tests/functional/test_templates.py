"""driver.templates with the real tools: mkfs, mkswap, genisoimage, mtools."""

from __future__ import annotations

import json
import os
import struct

import pytest

from driver import templates
from imagebackend import exception
from tests.functional.conftest import GiB, MiB, blkid, run
from tests.hosts import make_conf


class _Instance:
    """Nova-shaped: uuid, name, hostname, metadata, os_type."""

    def __init__(self, uuid='3c5e5b54-5f3a-4a83-9d59-0f6b0c1d2e3f',
                 name='instance-1', hostname=None, metadata=None,
                 os_type='linux'):
        self.uuid = uuid
        self.name = name
        if hostname is not None:
            self.hostname = hostname
        self.metadata = metadata if metadata is not None else {}
        self.os_type = os_type


@pytest.fixture
def conf(tmp_path):
    inst = tmp_path / 'instances'
    images = tmp_path / 'images'
    inst.mkdir()
    images.mkdir()
    return make_conf(str(inst), str(images))


def _make(template, path) -> dict:
    template(str(path))
    return blkid(str(path))


def _ext_block_count(path) -> tuple[int, int]:
    out = run('dumpe2fs', '-h', str(path))
    fields = dict(line.split(':', 1) for line in out.splitlines()
                  if ':' in line)
    return (int(fields['Block count'].strip()),
            int(fields['Block size'].strip()))


def _sparse(path) -> bool:
    st = os.stat(path)
    return st.st_blocks * 512 < st.st_size


# -- Ephemeral: Nova's filesystem choice --------------------------------------

def test_linux_is_ext4_with_label(conf, tmp_path):
    t = templates.ephemeral(conf, 64 * MiB, 'ephemeral0', 'linux')
    target = tmp_path / 'eph'
    info = _make(t, target)
    assert info['TYPE'] == 'ext4'
    assert info['LABEL'] == 'ephemeral0'
    assert os.path.getsize(target) == 64 * MiB
    blocks, block_size = _ext_block_count(target)
    assert blocks * block_size == 64 * MiB
    assert _sparse(target)
    assert t.cache_name == 'ephemeral_64M_fs-ext4_label-ephemeral0'


def test_windows_is_ntfs(conf, tmp_path):
    t = templates.ephemeral(conf, 64 * MiB, 'ephemeral0', 'windows')
    target = tmp_path / 'eph'
    info = _make(t, target)
    assert info['TYPE'] == 'ntfs'
    assert info['LABEL'] == 'ephemeral0'
    assert os.path.getsize(target) == 64 * MiB
    # -Q: a quick format leaves the file sparse.
    assert _sparse(target)


@pytest.mark.parametrize('os_type', [None, 'freebsd'])
def test_other_os_type_is_vfat(conf, tmp_path, os_type):
    t = templates.ephemeral(conf, 64 * MiB, 'ephemeral0', os_type)
    target = tmp_path / 'eph'
    info = _make(t, target)
    assert info['TYPE'] == 'vfat'
    assert info['LABEL'] == 'ephemeral0'
    assert os.path.getsize(target) == 64 * MiB


def test_default_ephemeral_format_xfs(conf, tmp_path):
    conf.set_override('default_ephemeral_format', 'xfs')
    # mkfs.xfs refuses filesystems under 300 MiB; the file is sparse.
    t = templates.ephemeral(conf, 1 * GiB, 'ephemeral0', 'linux')
    target = tmp_path / 'eph'
    info = _make(t, target)
    assert info['TYPE'] == 'xfs'
    assert info['LABEL'] == 'ephemeral0'
    assert os.path.getsize(target) == GiB
    assert t.cache_name == 'ephemeral_1G_fs-xfs_label-ephemeral0'


def test_bdm_specified_fs_ext3(conf, tmp_path):
    conf.set_override('default_ephemeral_format', 'xfs')
    t = templates.ephemeral(conf, 64 * MiB, 'ephemeral1', 'linux',
                            specified_fs='ext3')
    info = _make(t, tmp_path / 'eph')
    assert info['TYPE'] == 'ext3'
    assert info['LABEL'] == 'ephemeral1'


def test_bdm_unsupported_fs_is_refused(conf, tmp_path):
    with pytest.raises(exception.InvalidInput, match='ntfs'):
        templates.ephemeral(conf, 64 * MiB, 'ephemeral1', 'windows',
                            specified_fs='ntfs')


def test_virt_mkfs_for_os_type(conf, tmp_path):
    cmd = 'mkfs.ext3 -L %(fs_label)s -F %(target)s'
    conf.set_override('virt_mkfs', [f'linux={cmd}'])
    t = templates.ephemeral(conf, 64 * MiB, 'ephemeral0', 'linux')
    assert t.mkfs_command == cmd and t.fs is None
    info = _make(t, tmp_path / 'eph')
    assert info['TYPE'] == 'ext3'
    assert info['LABEL'] == 'ephemeral0'
    # The command is in the name, as a digest.
    assert t.cache_name.startswith('ephemeral_64M_label-ephemeral0_mkfs-h')
    # Another os_type has no command: Nova's default for it.
    other = templates.ephemeral(conf, 64 * MiB, 'ephemeral0', 'windows')
    assert _make(other, tmp_path / 'eph2')['TYPE'] == 'ntfs'


def test_virt_mkfs_default_key(conf, tmp_path):
    conf.set_override('virt_mkfs', [
        'default=mkfs.ext2 -q -L %(fs_label)s %(target)s',
        'windows=mkfs.ntfs -F -Q -L %(fs_label)s %(target)s'])
    for os_type in ('linux', None):
        t = templates.ephemeral(conf, 64 * MiB, 'ephemeral0', os_type)
        info = _make(t, tmp_path / f'eph-{os_type}')
        assert info['TYPE'] == 'ext2'
        assert info['LABEL'] == 'ephemeral0'
    win = templates.ephemeral(conf, 64 * MiB, 'ephemeral0', 'windows')
    assert _make(win, tmp_path / 'eph-win')['TYPE'] == 'ntfs'


# -- Ephemeral: cache names ---------------------------------------------------

def test_same_template_twice_same_name(conf, tmp_path):
    a = templates.ephemeral(conf, 64 * MiB, 'ephemeral0', 'linux')
    b = templates.ephemeral(conf, 64 * MiB, 'ephemeral0', 'linux')
    ia = _make(a, tmp_path / 'a')
    ib = _make(b, tmp_path / 'b')
    assert a.cache_name == b.cache_name
    assert a == b
    assert (ia['TYPE'], ia['LABEL']) == (ib['TYPE'], ib['LABEL'])


def test_different_fs_or_label_different_names(conf, tmp_path):
    ext4 = templates.ephemeral(conf, 64 * MiB, 'ephemeral0', 'linux')
    ntfs = templates.ephemeral(conf, 64 * MiB, 'ephemeral0', 'windows')
    vfat = templates.ephemeral(conf, 64 * MiB, 'ephemeral0', None)
    relabel = templates.ephemeral(conf, 64 * MiB, 'ephemeral1', 'linux')
    ext3 = templates.ephemeral(conf, 64 * MiB, 'ephemeral0', 'linux',
                               specified_fs='ext3')
    made = {}
    for key, t in [('ext4', ext4), ('ntfs', ntfs), ('vfat', vfat),
                   ('relabel', relabel), ('ext3', ext3)]:
        made[key] = _make(t, tmp_path / key)
    # Nova gave all of these one name (ephemeral_0_0706d66 and friends).
    cache_names = [t.cache_name for t in (ext4, ntfs, vfat, relabel, ext3)]
    assert len(set(cache_names)) == 5
    assert [made[k]['TYPE'] for k in ('ext4', 'ntfs', 'vfat', 'ext3')] == \
        ['ext4', 'ntfs', 'vfat', 'ext3']
    assert made['relabel']['LABEL'] == 'ephemeral1'


# -- Ephemeral: an existing target is formatted in place ----------------------

def test_existing_target_formatted_in_place(conf, tmp_path):
    """A file of the right size stands in for an LVM logical volume."""
    target = tmp_path / 'lv'
    with open(target, 'wb') as f:
        f.truncate(64 * MiB)
    before = os.stat(target)
    t = templates.ephemeral(conf, 64 * MiB, 'ephemeral0', 'linux')
    info = _make(t, target)
    after = os.stat(target)
    assert info['TYPE'] == 'ext4'
    assert info['LABEL'] == 'ephemeral0'
    assert (after.st_ino, after.st_dev) == (before.st_ino, before.st_dev)
    assert after.st_size == 64 * MiB

    # Reformatting a used "volume" with another filesystem works too.
    conf.set_override('default_ephemeral_format', 'xfs')
    target2 = tmp_path / 'lv2'
    with open(target2, 'wb') as f:
        f.truncate(GiB)
    ino = os.stat(target2).st_ino
    templates.ephemeral(conf, GiB, 'ephemeral0', 'linux')(str(target2))
    templates.Ephemeral(GiB, 'ephemeral0', 'ext4', None)(str(target2))
    assert blkid(str(target2))['TYPE'] == 'ext4'
    assert os.stat(target2).st_ino == ino


def test_existing_target_of_wrong_size_is_refused(conf, tmp_path):
    target = tmp_path / 'lv'
    with open(target, 'wb') as f:
        f.truncate(32 * MiB)
    t = templates.ephemeral(conf, 64 * MiB, 'ephemeral0', 'linux')
    with pytest.raises(exception.InvalidInput, match='bytes'):
        t(str(target))
    assert os.path.getsize(target) == 32 * MiB


def test_failed_mkfs_removes_only_what_it_created(conf, tmp_path):
    conf.set_override('virt_mkfs', ['linux=false %(target)s'])
    t = templates.ephemeral(conf, 64 * MiB, 'ephemeral0', 'linux')
    target = tmp_path / 'eph'
    with pytest.raises(exception.ProcessError):
        t(str(target))
    assert not target.exists()

    with open(target, 'wb') as f:
        f.truncate(64 * MiB)
    with pytest.raises(exception.ProcessError):
        t(str(target))
    assert os.path.getsize(target) == 64 * MiB


# -- Swap ---------------------------------------------------------------------

def test_swap(tmp_path):
    t = templates.Swap(64 * MiB)
    target = tmp_path / 'swap'
    info = _make(t, target)
    assert info['TYPE'] == 'swap'
    assert 'LABEL' not in info
    assert os.path.getsize(target) == 64 * MiB
    assert t.cache_name == 'swap_64M'
    # The swap header (linux/swap.h, union swap_header): "SWAPSPACE2" at
    # the end of the first page; version and last_page at byte 1024.
    page = os.sysconf('SC_PAGE_SIZE')
    with open(target, 'rb') as f:
        header = f.read(page)
    assert header[page - 10:] == b'SWAPSPACE2'
    version, last_page = struct.unpack_from('<II', header, 1024)
    assert version == 1
    assert (last_page + 1) * page == 64 * MiB


def test_swap_on_existing_target(tmp_path):
    target = tmp_path / 'lv'
    with open(target, 'wb') as f:
        f.truncate(64 * MiB)
    ino = os.stat(target).st_ino
    templates.Swap(64 * MiB)(str(target))
    assert blkid(str(target))['TYPE'] == 'swap'
    assert os.stat(target).st_ino == ino


# -- ConfigDrive --------------------------------------------------------------

def _iso_extract(path, inner) -> str:
    return run('isoinfo', '-i', str(path), '-J', '-x', inner)


def test_config_drive_iso9660(tmp_path):
    inst = _Instance(metadata={'role': 'web'})
    t = templates.ConfigDrive(inst, files=[('/etc/motd', 'hello\n')])
    target = tmp_path / 'disk.config'
    t(str(target))

    info = blkid(str(target))
    assert info['TYPE'] == 'iso9660'
    assert info['LABEL'] == 'config-2'
    listing = run('isoinfo', '-i', str(target), '-J', '-f').split()
    assert '/openstack/latest/meta_data.json' in listing
    assert '/openstack/latest/vendor_data.json' in listing
    assert '/openstack/content/0000' in listing

    meta = json.loads(_iso_extract(target,
                                   '/openstack/latest/meta_data.json'))
    assert meta['uuid'] == inst.uuid
    assert meta['name'] == 'instance-1'
    assert meta['hostname'] == 'instance-1'  # defaults to the name
    assert meta['meta'] == {'role': 'web'}
    assert meta['launch_index'] == 0
    assert meta['availability_zone'] is None
    assert meta['files'] == [{'path': '/etc/motd',
                              'content_path': '/content/0000'}]
    assert json.loads(_iso_extract(
        target, '/openstack/latest/vendor_data.json')) == {}
    assert _iso_extract(target, '/openstack/content/0000') == 'hello\n'
    assert t.cache_name == f'configdrive_{inst.uuid}'


def test_config_drive_vfat(tmp_path):
    inst = _Instance(hostname='web-1', metadata=None)
    t = templates.ConfigDrive(inst, fmt='vfat')
    target = tmp_path / 'disk.config'
    t(str(target))

    info = blkid(str(target))
    assert info['TYPE'] == 'vfat'
    assert info['LABEL'] == 'config-2'
    assert os.path.getsize(target) == 64 * MiB
    meta = json.loads(run('mtype', '-i', str(target),
                          '::/openstack/latest/meta_data.json'))
    assert meta['uuid'] == inst.uuid
    assert meta['hostname'] == 'web-1'
    assert meta['meta'] == {}
    assert 'files' not in meta
    assert json.loads(run('mtype', '-i', str(target),
                          '::/openstack/latest/vendor_data.json')) == {}
    assert t.cache_name == f'configdrive_{inst.uuid}'


def test_config_drive_vfat_existing_target(tmp_path):
    inst = _Instance()
    target = tmp_path / 'lv'
    with open(target, 'wb') as f:
        f.truncate(64 * MiB)
    ino = os.stat(target).st_ino
    templates.ConfigDrive(inst, fmt='vfat')(str(target))
    assert blkid(str(target))['LABEL'] == 'config-2'
    assert os.stat(target).st_ino == ino
