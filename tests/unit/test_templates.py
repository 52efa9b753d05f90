"""driver.templates with the process boundary faked: exact commands, names."""

from __future__ import annotations

import hashlib
import json
import os
from unittest import mock

import pytest

from driver import templates
from imagebackend import exception
from tests.hosts import GiB, MiB, make_conf

EXT3_CMD = 'mkfs.ext3 -L %(fs_label)s -F %(target)s'
DEFAULT_CMD = 'mkfs.ext2 -q -L %(fs_label)s %(target)s'
UUID = '0b6a7f4e-2f1d-4c7a-8e3b-5d9c1a2b3c4d'


@pytest.fixture
def conf(tmp_path):
    inst = tmp_path / 'instances'
    images = tmp_path / 'images'
    inst.mkdir()
    images.mkdir()
    return make_conf(str(inst), str(images))


@pytest.fixture
def execute():
    with mock.patch('imagebackend.processes.execute',
                    return_value=('', '')) as m:
        yield m


def _commands(execute) -> list[tuple[str, ...]]:
    return [c.args for c in execute.call_args_list]


class _Instance:
    def __init__(self, uuid=UUID, name='instance-1', metadata=None,
                 **extra):
        self.uuid = uuid
        self.name = name
        self.metadata = metadata
        self.os_type = 'linux'
        for k, v in extra.items():
            setattr(self, k, v)


# -- the filesystem choice ----------------------------------------------------

T = '<target>'

# (os_type, default_ephemeral_format, virt_mkfs, specified_fs) -> command.
FS_TABLE = [
    # Nova's defaults by os_type (Appendix A), plus -q/-Q.
    ('linux', None, [], None,
     ['mkfs', '-t', 'ext4', '-F', '-q', '-L', 'ephemeral0', T]),
    ('windows', None, [], None,
     ['mkfs', '-t', 'ntfs', '-F', '-Q', '-L', 'ephemeral0', T]),
    (None, None, [], None,
     ['mkfs', '-t', 'vfat', '-n', 'ephemeral0', T]),
    ('freebsd', None, [], None,
     ['mkfs', '-t', 'vfat', '-n', 'ephemeral0', T]),
    # default_ephemeral_format beats the os_type default.
    ('linux', 'xfs', [], None,
     ['mkfs', '-t', 'xfs', '-f', '-L', 'ephemeral0', T]),
    ('windows', 'ext4', [], None,
     ['mkfs', '-t', 'ext4', '-F', '-q', '-L', 'ephemeral0', T]),
    (None, 'ext2', [], None,
     ['mkfs', '-t', 'ext2', '-q', '-L', 'ephemeral0', T]),
    ('linux', 'msdos', [], None,
     ['mkfs', '-t', 'msdos', '-n', 'ephemeral0', T]),
    # A BDM's guest_format beats both.
    ('linux', 'xfs', [], 'ext3',
     ['mkfs', '-t', 'ext3', '-F', '-q', '-L', 'ephemeral0', T]),
    ('windows', None, [], 'xfs',
     ['mkfs', '-t', 'xfs', '-f', '-L', 'ephemeral0', T]),
    (None, None, [], 'ext2',
     ['mkfs', '-t', 'ext2', '-q', '-L', 'ephemeral0', T]),
    ('linux', None, [], '',  # '' is "not given" in Nova
     ['mkfs', '-t', 'ext4', '-F', '-q', '-L', 'ephemeral0', T]),
    # A virt_mkfs command for the os_type beats everything, even the BDM.
    ('linux', None, [f'linux={EXT3_CMD}'], None,
     ['mkfs.ext3', '-L', 'ephemeral0', '-F', T]),
    ('linux', 'xfs', [f'linux={EXT3_CMD}'], 'ext4',
     ['mkfs.ext3', '-L', 'ephemeral0', '-F', T]),
    # ...but only for that os_type.
    ('windows', None, [f'linux={EXT3_CMD}'], None,
     ['mkfs', '-t', 'ntfs', '-F', '-Q', '-L', 'ephemeral0', T]),
    # default= applies to os_types without their own command, and None.
    ('windows', 'xfs', [f'default={DEFAULT_CMD}'], None,
     ['mkfs.ext2', '-q', '-L', 'ephemeral0', T]),
    (None, None, [f'default={DEFAULT_CMD}'], 'ext4',
     ['mkfs.ext2', '-q', '-L', 'ephemeral0', T]),
    ('linux', None, [f'default={DEFAULT_CMD}', f'linux={EXT3_CMD}'], None,
     ['mkfs.ext3', '-L', 'ephemeral0', '-F', T]),
    # Later entries win; '=' inside a command is kept.
    ('linux', None, ['linux=mkfs.xfs %(target)s',
                     'linux=mkfs.ext4 -E stride=8 -L %(fs_label)s '
                     '%(target)s'], None,
     ['mkfs.ext4', '-E', 'stride=8', '-L', 'ephemeral0', T]),
    # An empty command (Nova: `... or ''`) falls through to a filesystem,
    # not to the default command.
    ('linux', None, ['default=mkfs.xfs %(target)s', 'linux='], None,
     ['mkfs', '-t', 'ext4', '-F', '-q', '-L', 'ephemeral0', T]),
]


@pytest.mark.parametrize('os_type,default_fs,virt_mkfs,specified_fs,want',
                         FS_TABLE)
def test_fs_choice_commands(conf, tmp_path, execute, os_type, default_fs,
                            virt_mkfs, specified_fs, want):
    conf.set_override('default_ephemeral_format', default_fs)
    conf.set_override('virt_mkfs', virt_mkfs)
    target = str(tmp_path / 'eph')
    t = templates.ephemeral(conf, GiB, 'ephemeral0', os_type,
                            specified_fs=specified_fs)
    t(target)
    assert _commands(execute) == [tuple(target if a == T else a
                                        for a in want)]
    # The sparse file was made in-process before mkfs ran.
    st = os.stat(target)
    assert st.st_size == GiB
    assert st.st_blocks == 0


def test_command_argument_order_is_nova_plus_quiet():
    assert templates.mkfs_args('ext3', 'ephemeral0', '/d') == [
        'mkfs', '-t', 'ext3', '-F', '-q', '-L', 'ephemeral0', '/d']
    assert templates.mkfs_args('btrfs', 'eph', '/d') == [
        'mkfs', '-t', 'btrfs', '-L', 'eph', '/d']


def test_target_with_spaces_stays_one_argument(conf, tmp_path, execute):
    conf.set_override('virt_mkfs', [f'linux={EXT3_CMD}'])
    d = tmp_path / 'a dir'
    d.mkdir()
    target = str(d / 'eph 0')
    templates.ephemeral(conf, GiB, 'ephemeral0', 'linux')(target)
    assert _commands(execute) == [
        ('mkfs.ext3', '-L', 'ephemeral0', '-F', target)]


def test_quoted_virt_mkfs_arguments(conf, tmp_path, execute):
    conf.set_override('virt_mkfs',
                      ["linux=mkfs.ext4 -E 'stride=8,stripe-width=16' "
                       "-L %(fs_label)s %(target)s"])
    target = str(tmp_path / 'eph')
    templates.ephemeral(conf, GiB, 'ephemeral0', 'linux')(target)
    assert _commands(execute) == [
        ('mkfs.ext4', '-E', 'stride=8,stripe-width=16', '-L', 'ephemeral0',
         target)]


# -- invalid input ------------------------------------------------------------

@pytest.mark.parametrize('fs', ['ntfs', 'vfat', 'btrfs', 'EXT4', 'ext4 '])
def test_unsupported_specified_fs(conf, execute, fs):
    with pytest.raises(exception.InvalidInput) as e:
        templates.ephemeral(conf, GiB, 'ephemeral1', 'linux',
                            specified_fs=fs)
    assert repr(fs) in str(e.value)
    assert 'ext2, ext3, ext4, xfs' in str(e.value)
    execute.assert_not_called()


def test_unsupported_specified_fs_refused_even_with_virt_mkfs(conf):
    # Nova validates guest_format before it looks at virt_mkfs.
    conf.set_override('virt_mkfs', [f'linux={EXT3_CMD}'])
    with pytest.raises(exception.InvalidInput):
        templates.ephemeral(conf, GiB, 'ephemeral1', 'linux',
                            specified_fs='ntfs')


@pytest.mark.parametrize('entry', [
    'mkfs.ext4 %(target)s',                      # no os_type=
    'linux=mkfs.ext4 -L %(label)s %(target)s',   # unknown placeholder
    'linux=mkfs.ext4 -m 5% %(target)s',          # stray %
    "linux=mkfs.ext4 -L 'ephemeral0 %(target)s",  # unbalanced quote
])
def test_bad_virt_mkfs_is_refused_up_front(conf, execute, entry):
    conf.set_override('virt_mkfs', [entry])
    with pytest.raises(exception.InvalidInput):
        templates.ephemeral(conf, GiB, 'ephemeral0', 'linux')
    execute.assert_not_called()


@pytest.mark.parametrize('fs,label', [
    ('vfat', 'ephemeral100'),   # 12 > 11
    ('msdos', 'ephemeral100'),
    ('xfs', 'ephemeral1000'),   # 13 > 12
    ('ext4', 'e' * 17),         # 17 > 16
])
def test_label_too_long(fs, label):
    with pytest.raises(exception.InvalidInput, match='characters'):
        templates.Ephemeral(GiB, label, fs, None)


def test_nova_labels_fit():
    for fs in ('vfat', 'xfs', 'ext4', 'ntfs'):
        templates.Ephemeral(GiB, 'ephemeral10', fs, None)
    templates.Ephemeral(GiB, 'ephemeral100', 'xfs', None)


@pytest.mark.parametrize('kwargs', [
    dict(size=GiB, label='ephemeral0', fs=None, mkfs_command=None),
    dict(size=GiB, label='ephemeral0', fs='ext4', mkfs_command=EXT3_CMD),
    dict(size=0, label='ephemeral0', fs='ext4', mkfs_command=None),
    dict(size=-1, label='ephemeral0', fs='ext4', mkfs_command=None),
    dict(size=True, label='ephemeral0', fs='ext4', mkfs_command=None),
    dict(size=1.5, label='ephemeral0', fs='ext4', mkfs_command=None),
    dict(size=GiB, label='', fs='ext4', mkfs_command=None),
    dict(size=GiB, label='ephemeral0', fs='-V', mkfs_command=None),
    dict(size=GiB, label='ephemeral0', fs=None, mkfs_command='   '),
])
def test_bad_ephemeral(kwargs):
    with pytest.raises(exception.InvalidInput):
        templates.Ephemeral(**kwargs)


@pytest.mark.parametrize('size', [0, -1, None, True, '1'])
def test_bad_swap(size):
    with pytest.raises(exception.InvalidInput):
        templates.Swap(size)


def test_bad_config_drive():
    with pytest.raises(exception.InvalidInput, match='iso9660, vfat'):
        templates.ConfigDrive(_Instance(), fmt='udf')
    with pytest.raises(exception.InvalidInput):
        templates.ConfigDrive(_Instance(uuid='../etc'))


# -- targets ------------------------------------------------------------------

def test_existing_target_right_size_not_recreated(tmp_path, execute):
    target = tmp_path / 'lv'
    with open(target, 'wb') as f:
        f.write(b'x' * 4096)
        f.truncate(GiB)
    ino = os.stat(target).st_ino
    templates.Ephemeral(GiB, 'ephemeral0', 'ext4', None)(str(target))
    assert _commands(execute) == [
        ('mkfs', '-t', 'ext4', '-F', '-q', '-L', 'ephemeral0', str(target))]
    assert os.stat(target).st_ino == ino
    with open(target, 'rb') as f:
        assert f.read(4096) == b'x' * 4096  # not truncated (mkfs is fake)


@pytest.mark.parametrize('size', [GiB - 1, GiB + 1, 0])
def test_existing_target_wrong_size_refused(tmp_path, execute, size):
    target = tmp_path / 'lv'
    with open(target, 'wb') as f:
        f.truncate(size)
    with pytest.raises(exception.InvalidInput):
        templates.Swap(GiB)(str(target))
    execute.assert_not_called()
    assert os.path.getsize(target) == size


def test_existing_directory_refused(tmp_path, execute):
    with pytest.raises(exception.InvalidInput, match='neither'):
        templates.Swap(GiB)(str(tmp_path))
    execute.assert_not_called()


def test_failure_removes_created_file_only(tmp_path, execute):
    execute.side_effect = exception.ProcessError(
        cmd='mkswap', exit_code=1, stdout='', stderr='boom')
    target = tmp_path / 'swap'
    with pytest.raises(exception.ProcessError):
        templates.Swap(GiB)(str(target))
    assert not target.exists()

    with open(target, 'wb') as f:
        f.truncate(GiB)
    with pytest.raises(exception.ProcessError):
        templates.Swap(GiB)(str(target))
    assert os.path.getsize(target) == GiB


def test_swap_command(tmp_path, execute):
    target = str(tmp_path / 'swap')
    templates.Swap(512 * MiB)(target)
    assert _commands(execute) == [('mkswap', target)]
    assert os.path.getsize(target) == 512 * MiB


# -- config drive -------------------------------------------------------------

def _capture_tree(seen):
    """A fake execute that records the staged tree while it exists."""
    def fake(*cmd, **kwargs):
        for arg in cmd:
            if not (os.path.isabs(arg) and os.path.isdir(arg)):
                continue
            # genisoimage gets the staging root, mcopy its entries.
            top = os.path.dirname(arg) if os.path.basename(arg) == \
                'openstack' else arg
            for root, _dirs, files in os.walk(top):
                for n in files:
                    p = os.path.join(root, n)
                    with open(p, 'rb') as f:
                        seen[os.path.relpath(p, top)] = f.read()
        return '', ''
    return fake


def test_config_drive_iso9660_command(tmp_path, execute):
    seen = {}
    execute.side_effect = _capture_tree(seen)
    inst = _Instance(metadata={'a': 'b'}, hostname='host-1')
    target = str(tmp_path / 'disk.config')
    templates.ConfigDrive(inst, files=[('/etc/x', b'\x00bin'),
                                       ('/etc/y', 'text')])(target)
    [cmd] = _commands(execute)
    root = cmd[-1]
    assert cmd == ('genisoimage', '-o', target, '-ldots', '-allow-lowercase',
                   '-allow-multidot', '-l', '-publisher', 'imagebackend',
                   '-quiet', '-J', '-r', '-V', 'config-2', root)
    assert not os.path.exists(root)  # the staging tree is gone
    assert json.loads(seen['openstack/latest/meta_data.json']) == {
        'uuid': UUID, 'name': 'instance-1', 'hostname': 'host-1',
        'meta': {'a': 'b'}, 'launch_index': 0, 'availability_zone': None,
        'files': [{'path': '/etc/x', 'content_path': '/content/0000'},
                  {'path': '/etc/y', 'content_path': '/content/0001'}]}
    assert json.loads(seen['openstack/latest/vendor_data.json']) == {}
    assert seen['openstack/content/0000'] == b'\x00bin'
    assert seen['openstack/content/0001'] == b'text'
    assert len(seen) == 4


def test_config_drive_vfat_commands(tmp_path, execute):
    seen = {}
    execute.side_effect = _capture_tree(seen)
    inst = _Instance()  # no hostname attribute, metadata None
    target = str(tmp_path / 'disk.config')
    templates.ConfigDrive(inst, fmt='vfat')(target)
    mkfs, mcopy = _commands(execute)
    assert mkfs == ('mkfs.vfat', '-n', 'config-2', target)
    root = os.path.dirname(mcopy[4])
    assert mcopy == ('mcopy', '-s', '-i', target,
                     os.path.join(root, 'openstack'), '::/')
    assert os.path.getsize(target) == 64 * MiB
    meta = json.loads(seen['openstack/latest/meta_data.json'])
    assert meta['hostname'] == 'instance-1'
    assert meta['meta'] == {}
    assert 'files' not in meta


def test_config_drive_iso_failure_removes_new_target(tmp_path, execute):
    def fail(*cmd, **kwargs):
        with open(cmd[2], 'wb') as f:  # genisoimage got as far as -o
            f.write(b'partial')
        raise exception.ProcessError(cmd='genisoimage', exit_code=1,
                                     stdout='', stderr='boom')
    execute.side_effect = fail
    target = tmp_path / 'disk.config'
    with pytest.raises(exception.ProcessError):
        templates.ConfigDrive(_Instance())(str(target))
    assert not target.exists()


# -- cache names --------------------------------------------------------------

def _sha(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()[:10]


def test_cache_names(conf):
    assert templates.ephemeral(conf, GiB, 'ephemeral0', 'linux').cache_name \
        == 'ephemeral_1G_fs-ext4_label-ephemeral0'
    assert templates.ephemeral(conf, 20 * GiB, 'ephemeral0',
                               'windows').cache_name \
        == 'ephemeral_20G_fs-ntfs_label-ephemeral0'
    assert templates.ephemeral(conf, GiB, 'ephemeral2', None).cache_name \
        == 'ephemeral_1G_fs-vfat_label-ephemeral2'
    assert templates.ephemeral(conf, GiB, 'ephemeral1', 'linux',
                               'xfs').cache_name \
        == 'ephemeral_1G_fs-xfs_label-ephemeral1'
    conf.set_override('virt_mkfs', [f'linux={EXT3_CMD}'])
    assert templates.ephemeral(conf, GiB, 'ephemeral0', 'linux').cache_name \
        == f'ephemeral_1G_label-ephemeral0_mkfs-h{_sha(EXT3_CMD)}'
    assert templates.Swap(512 * MiB).cache_name == 'swap_512M'
    assert templates.Swap(2 * GiB).cache_name == 'swap_2G'
    assert templates.ConfigDrive(_Instance()).cache_name == \
        f'configdrive_{UUID}'
    assert templates.ConfigDrive(_Instance(), fmt='vfat').cache_name == \
        f'configdrive_{UUID}'


def test_cache_names_differ_when_bytes_differ(conf):
    """Nova's collisions (section 4.2) are gone."""
    made = [
        templates.ephemeral(conf, GiB, 'ephemeral0', 'linux'),
        templates.ephemeral(conf, GiB, 'ephemeral0', 'windows'),
        templates.ephemeral(conf, GiB, 'ephemeral0', None),
        templates.ephemeral(conf, GiB, 'ephemeral1', 'linux'),
        templates.ephemeral(conf, GiB, 'ephemeral0', 'linux', 'xfs'),
        templates.ephemeral(conf, GiB, 'ephemeral0', 'linux', 'ext3'),
        templates.ephemeral(conf, 2 * GiB, 'ephemeral0', 'linux'),
        templates.Ephemeral(GiB, 'ephemeral0', None, EXT3_CMD),
        templates.Ephemeral(GiB, 'ephemeral0', None, DEFAULT_CMD),
        templates.Ephemeral(GiB, 'ephemeral1', None, DEFAULT_CMD),
    ]
    assert len({t.cache_name for t in made}) == len(made)


def test_cache_names_equal_when_bytes_equal(conf):
    a = templates.ephemeral(conf, GiB, 'ephemeral0', 'linux')
    b = templates.ephemeral(conf, GiB, 'ephemeral0', 'linux')
    assert a == b and a.cache_name == b.cache_name
    # The same filesystem reached another way is the same template.
    conf.set_override('default_ephemeral_format', 'ext4')
    c = templates.ephemeral(conf, GiB, 'ephemeral0', 'windows')
    assert c == a and c.cache_name == a.cache_name


def test_templates_are_frozen():
    t = templates.Swap(GiB)
    with pytest.raises(AttributeError):
        t.size = 2 * GiB
