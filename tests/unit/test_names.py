"""Tests for imagebackend.names: the names that become paths."""

import hashlib

import pytest

from imagebackend import exception
from imagebackend import names

# Every disk name Nova's driver uses (nova-behaviour 1.5).
NOVA_DISK_NAMES = ['disk', 'disk.local', 'disk.eph0', 'disk.eph12',
                   'disk.swap', 'disk.config', 'disk.rescue',
                   'disk.config.rescue', 'kernel', 'ramdisk',
                   'kernel.rescue', 'ramdisk.rescue']

# Cache names Nova writes into _base: sha1 hex of an image id, ephemeral and
# swap templates (nova-behaviour 4.2).
NOVA_CACHE_NAMES = [hashlib.sha1(b'image-1').hexdigest(),
                    'ephemeral_1_ext4_ephemeral0', 'ephemeral_20_40d1d2c',
                    'ephemeral_0_0706d66', 'swap_512', 'swap_1']

BAD_NAMES = [
    '', None, 123, b'disk', ['disk'],
    '../x', '..', 'a..b', 'a/b', '/abs', 'a\\b', 'a\0b',
    '.hidden', '-x', '_x', '+x', 'a b', 'a\nb', 'dísk', 'a:b', 'a*',
    'a' * 201,
    # A trailing newline: a regex '$' would match before it.
    'disk\n', 'swap_512\n',
]


@pytest.mark.parametrize('name', NOVA_DISK_NAMES)
def test_nova_disk_names_are_valid(name):
    assert names.check_disk_name(name) == name


@pytest.mark.parametrize('name', NOVA_CACHE_NAMES + NOVA_DISK_NAMES)
def test_nova_cache_names_are_valid(name):
    assert names.check_cache_name(name) == name


@pytest.mark.parametrize('name', BAD_NAMES)
def test_bad_disk_names_are_refused(name):
    with pytest.raises(exception.InvalidDiskName) as e:
        names.check_disk_name(name)
    assert 'disk name' in str(e.value)


@pytest.mark.parametrize('name', BAD_NAMES)
def test_bad_cache_names_are_refused(name):
    with pytest.raises(exception.InvalidDiskName):
        names.check_cache_name(name)


@pytest.mark.parametrize('name', BAD_NAMES)
def test_bad_instance_uuids_are_refused(name):
    with pytest.raises(exception.InvalidDiskName):
        names.check_instance_uuid(name)


def test_instance_uuid_is_accepted():
    uuid = '0e4b7b4a-3f5c-4b8e-9a55-1c1f2d3e4f5a'
    assert names.check_instance_uuid(uuid) == uuid


def test_longest_name_is_accepted():
    assert names.check_disk_name('a' * 200) == 'a' * 200
    with pytest.raises(exception.InvalidDiskName):
        names.check_disk_name('a' * 201)


def test_invalid_disk_name_is_an_invalid_input():
    # Callers catching InvalidInput (or the library's base) see it too.
    with pytest.raises(exception.InvalidInput):
        names.check_disk_name('../x')
    with pytest.raises(exception.ImageBackendError):
        names.check_disk_name('../x')


def test_path_separator_reason():
    with pytest.raises(exception.InvalidDiskName) as e:
        names.check_disk_name('a/b')
    assert 'path separator' in str(e.value)
    assert e.value.kwargs['name'] == 'a/b'


def test_dotdot_reason():
    with pytest.raises(exception.InvalidDiskName) as e:
        names.check_disk_name('a..b')
    assert '..' in e.value.kwargs['reason']


@pytest.mark.parametrize('suffix', [names.META_SUFFIX, names.PART_SUFFIX])
def test_reserved_suffixes_are_refused_for_cache_names(suffix):
    assert suffix in ('.meta.json', '.part')
    with pytest.raises(exception.InvalidDiskName) as e:
        names.check_cache_name('abc' + suffix)
    assert 'reserved suffix' in str(e.value)
    # Also for a sha1 name, as a cache entry's sidecar/partial would be.
    with pytest.raises(exception.InvalidDiskName):
        names.check_cache_name(names.image_cache_name('image-1') + suffix)


def test_reserved_suffix_only_at_the_end():
    assert names.check_cache_name('abc.part.x') == 'abc.part.x'
    assert names.check_cache_name('abc.meta.json2') == 'abc.meta.json2'


@pytest.mark.parametrize('image_id', [
    'image-1', '6c3a9b8e-2b1d-4a8f-9a0e-0d6f3c1b2a4e', 'a', 'ünïcode',
    '../../etc/passwd', 'with space'])
def test_image_cache_name_is_sha1_hex_of_the_id(image_id):
    name = names.image_cache_name(image_id)
    assert name == hashlib.sha1(image_id.encode('utf-8')).hexdigest()
    assert len(name) == 40
    assert all(c in '0123456789abcdef' for c in name)
    # Whatever the id, the derived name is a safe cache name.
    assert names.check_cache_name(name) == name


def test_image_cache_name_known_value():
    # Nova's name for image 'image-1' (sha1 of the id).
    assert names.image_cache_name('image-1') == \
        hashlib.sha1(b'image-1').hexdigest()


@pytest.mark.parametrize('image_id', ['', None, 5, b'image-1'])
def test_image_cache_name_refuses_non_strings(image_id):
    with pytest.raises(exception.InvalidInput):
        names.image_cache_name(image_id)


# -- template_name (robust properties only) -----------------------------------

@pytest.mark.parametrize('kind, size, traits', [
    ('ephemeral', 1024 ** 3, {'fs': 'ext4', 'label': 'ephemeral0'}),
    ('ephemeral', 20 * 1024 ** 3, {'fs': 'vfat', 'label': None}),
    ('ephemeral', 1024 ** 3, {'mkfs': 'mkfs.ext4 -F -L %(fs_label)s '
                                      '%(target)s'}),
    ('swap', 512 * 1024 ** 2, {}),
])
def test_template_name_is_a_safe_cache_name_with_nova_prefix(kind, size,
                                                             traits):
    name = names.template_name(kind, size, **traits)
    assert names.check_cache_name(name) == name
    # Legacy code keys off the prefix (shim.template_kwargs, Nova).
    assert name.startswith(kind + '_')
    assert ' ' not in name and '%' not in name


def test_template_name_differs_with_the_bytes():
    gib = 1024 ** 3
    base = names.template_name('ephemeral', gib, fs='ext4', label='eph0')
    assert names.template_name('ephemeral', gib, fs='xfs',
                               label='eph0') != base
    assert names.template_name('ephemeral', gib, fs='ext4',
                               label='eph1') != base
    assert names.template_name('ephemeral', 2 * gib, fs='ext4',
                               label='eph0') != base
    assert names.template_name('ephemeral', gib, fs='ext4', label='eph0',
                               mkfs='mkfs -t ext4 %(target)s') != base
    assert names.template_name('ephemeral', gib, fs='ext4',
                               label='eph0') == base  # stable


def test_template_name_never_confuses_traits_or_sizes():
    gib = 1024 ** 3
    assert names.template_name('ephemeral', gib, fs='ext4') != \
        names.template_name('ephemeral', gib, label='ext4')
    assert names.template_name('swap', 1) != names.template_name(
        'swap', 1024 ** 2)
    assert names.template_name('ephemeral', gib, fs='ext4',
                               label='ephemeral0') == \
        'ephemeral_1G_fs-ext4_label-ephemeral0'


def test_disk_name_from_nova_storage_names():
    uuid = '3b6d4f3e-0a43-4a5c-9b8b-1d0e2c3f4a5b'
    assert names.disk_name_from(f'{uuid}_disk.local', uuid) == 'disk.local'
    assert names.disk_name_from(f'{uuid}_', uuid) == ''
    assert names.disk_name_from('other_disk', uuid) is None
    with pytest.raises(exception.InvalidInput):
        names.disk_name_from('x_disk', '../x')
