"""Tests for imagebackend.config.

The options shared with Nova must be registrable next to Nova's: oslo.config
accepts a second registration only when it is equal to the first, and raises
DuplicateOptError otherwise. These tests check both halves of that contract
on fresh ConfigOpts objects, so the global cfg.CONF is left alone (except in
the one test of the default argument).
"""

import copy
import glob
import importlib.machinery
import importlib.util
import os
import sys
import zipfile

import pytest
from oslo_config import cfg

from imagebackend import config


# Every option that is a copy of one of Nova's, as (group name, opt).
NOVA_OPTS = [(group, opt)
             for group, opts in config.list_opts()
             if group != 'imagebackend'
             for opt in opts]

EXPECTED = {
    'DEFAULT': {'state_path', 'instances_path', 'use_cow_images',
                'force_raw_images', 'preallocate_images',
                'default_ephemeral_format', 'virt_mkfs'},
    'compute': {'vmdk_allowed_types', 'max_concurrent_disk_ops'},
    'image_cache': {'subdirectory_name', 'manager_interval',
                    'remove_unused_base_images',
                    'remove_unused_original_minimum_age_seconds',
                    'remove_unused_resized_minimum_age_seconds'},
    'libvirt': {'images_type', 'images_volume_group',
                'sparse_logical_volumes', 'volume_clear', 'volume_clear_size',
                'images_rbd_pool', 'images_rbd_ceph_conf', 'rbd_user',
                'images_rbd_glance_store_name',
                'images_rbd_glance_copy_poll_interval',
                'images_rbd_glance_copy_timeout',
                'rbd_secret_uuid', 'rbd_connect_timeout', 'hw_disk_discard',
                'virt_type', 'snapshot_compression'},
    'workarounds': {'disable_deep_image_inspection'},
    'ephemeral_storage_encryption': {'enabled', 'cipher', 'key_size',
                                     'default_format'},
    'imagebackend': {'images_dir', 'qemu_img_address_space_limit',
                     'qemu_img_cpu_time_limit', 'thin_pool',
                     'max_image_virtual_size_gb', 'qcow2_overlay_writer'},
}


def _group_arg(group):
    return None if group == 'DEFAULT' else group


@pytest.fixture
def conf():
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf([])
    return conf


def test_register_is_idempotent_and_returns_conf():
    conf = cfg.ConfigOpts()
    assert config.register_opts(conf) is conf
    assert config.register_opts(conf) is conf
    conf([])
    assert conf.libvirt.images_type == 'default'


def test_state_does_not_leak_between_conf_objects():
    # oslo.config's register_group() shallow-copies the OptGroup, so reusing
    # one OptGroup object would share overrides between ConfigOpts objects.
    first = config.register_opts(cfg.ConfigOpts())
    first([])
    first.set_override('images_type', 'lvm', group='libvirt')
    first.set_default('subdirectory_name', '_other', group='image_cache')
    second = config.register_opts(cfg.ConfigOpts())
    second([])
    assert first.libvirt.images_type == 'lvm'
    assert second.libvirt.images_type == 'default'
    assert second.image_cache.subdirectory_name == '_base'


def test_register_defaults_to_global_conf():
    assert config.CONF is cfg.CONF
    assert config.register_opts() is cfg.CONF
    # A second time is harmless too, whoever registered first.
    assert config.register_opts(None) is cfg.CONF


def test_defaults(conf):
    assert conf.use_cow_images is True
    assert conf.force_raw_images is True
    assert conf.preallocate_images == 'none'
    assert conf.default_ephemeral_format is None
    assert conf.virt_mkfs == []
    assert conf.compute.max_concurrent_disk_ops == 0
    assert conf.compute.vmdk_allowed_types == ['streamOptimized',
                                               'monolithicSparse']
    assert conf.image_cache.subdirectory_name == '_base'
    assert conf.image_cache.manager_interval == 2400
    assert conf.image_cache.remove_unused_base_images is True
    assert (conf.image_cache.remove_unused_original_minimum_age_seconds
            == 24 * 3600)
    assert conf.image_cache.remove_unused_resized_minimum_age_seconds == 3600
    assert conf.libvirt.images_type == 'default'
    assert conf.libvirt.images_volume_group is None
    assert conf.libvirt.sparse_logical_volumes is False
    assert conf.libvirt.volume_clear == 'zero'
    assert conf.libvirt.volume_clear_size == 0
    assert conf.libvirt.images_rbd_pool == 'rbd'
    assert conf.libvirt.images_rbd_ceph_conf == ''
    assert conf.libvirt.rbd_user is None
    assert conf.libvirt.rbd_secret_uuid is None
    assert conf.libvirt.rbd_connect_timeout == 5
    assert conf.libvirt.images_rbd_glance_store_name == ''
    assert conf.libvirt.images_rbd_glance_copy_poll_interval == 15
    assert conf.libvirt.images_rbd_glance_copy_timeout == 600
    assert conf.libvirt.hw_disk_discard is None
    assert conf.libvirt.virt_type == 'kvm'
    assert conf.libvirt.snapshot_compression is False
    assert conf.workarounds.disable_deep_image_inspection is False
    assert conf.ephemeral_storage_encryption.enabled is False
    assert conf.ephemeral_storage_encryption.cipher == 'aes-xts-plain64'
    assert conf.ephemeral_storage_encryption.key_size == 512
    assert conf.ephemeral_storage_encryption.default_format == 'luks'
    assert conf.imagebackend.qemu_img_address_space_limit == 2
    assert conf.imagebackend.qemu_img_cpu_time_limit == 30
    assert conf.imagebackend.thin_pool is None


def test_paths_interpolate(conf):
    # instances_path defaults to $state_path/instances, state_path to
    # $pybasedir, exactly as in Nova.
    assert conf.state_path == conf.pybasedir
    assert conf.instances_path == os.path.join(conf.pybasedir, 'instances')
    # images_dir sits in another group but refers to [DEFAULT]/instances_path.
    assert (conf.imagebackend.images_dir
            == conf.instances_path + '/../images')
    conf.set_override('state_path', '/srv/state')
    assert conf.instances_path == '/srv/state/instances'
    assert conf.imagebackend.images_dir == '/srv/state/instances/../images'


@pytest.mark.parametrize(
    ('group', 'opt'), NOVA_OPTS,
    ids=['%s.%s' % (g, o.dest) for g, o in NOVA_OPTS])
def test_equal_copy_registers_without_error(group, opt):
    # What Nova does when it registers its own (equal) definition after us.
    conf = config.register_opts(cfg.ConfigOpts())
    twin = copy.deepcopy(opt)
    assert twin is not opt and twin == opt
    assert conf.register_opt(twin, group=_group_arg(group)) is False


@pytest.mark.parametrize('other', [
    # A different default.
    cfg.StrOpt('images_type', default='qcow2',
               choices=('raw', 'flat', 'qcow2', 'lvm', 'rbd', 'ploop',
                        'default')),
    # Only the help text differs: still a conflict.
    'help',
])
def test_different_definition_raises(other):
    conf = config.register_opts(cfg.ConfigOpts())
    if other == 'help':
        other = copy.deepcopy(
            next(o for o in config.LIBVIRT_OPTS if o.dest == 'images_type'))
        other.help += ' '
    with pytest.raises(cfg.DuplicateOptError):
        conf.register_opt(other, group='libvirt')


def test_different_definition_raises_in_default_group():
    conf = config.register_opts(cfg.ConfigOpts())
    with pytest.raises(cfg.DuplicateOptError):
        conf.register_opt(cfg.BoolOpt('use_cow_images', default=False))


def test_list_opts_shape_and_coverage():
    listed = config.list_opts()
    assert isinstance(listed, list)
    for item in listed:
        assert isinstance(item, tuple) and len(item) == 2
        group, opts = item
        assert isinstance(group, str)
        assert isinstance(opts, list) and opts
        assert all(isinstance(o, cfg.Opt) for o in opts)
    groups = [g for g, _ in listed]
    assert len(groups) == len(set(groups))
    assert set(groups) == set(EXPECTED)
    names = {g: {o.dest for o in opts} for g, opts in listed}
    for group, expected in EXPECTED.items():
        assert expected <= names[group], group
    # Nothing unexpected apart from pybasedir, which state_path needs.
    assert names['DEFAULT'] - EXPECTED['DEFAULT'] == {'pybasedir'}
    for group in set(EXPECTED) - {'DEFAULT'}:
        assert names[group] == EXPECTED[group], group


def test_list_opts_matches_module_lists():
    by_group = dict(config.list_opts())
    assert by_group['DEFAULT'] == config.DEFAULT_OPTS
    assert by_group['compute'] == config.COMPUTE_OPTS
    assert by_group['image_cache'] == config.IMAGE_CACHE_OPTS
    assert by_group['libvirt'] == config.LIBVIRT_OPTS
    assert by_group['workarounds'] == config.WORKAROUNDS_OPTS
    assert (by_group['ephemeral_storage_encryption'] ==
            config.EPHEMERAL_STORAGE_ENCRYPTION_OPTS)
    assert by_group['imagebackend'] == config.IMAGEBACKEND_OPTS


def test_every_listed_opt_is_registered(conf):
    for group, opts in config.list_opts():
        for opt in opts:
            if group == 'DEFAULT':
                assert opt.dest in conf
            else:
                assert opt.dest in conf[group]


@pytest.mark.parametrize(('group', 'name', 'value'), [
    ('libvirt', 'images_type', 'bogus'),
    ('libvirt', 'volume_clear', 'bogus'),
    ('libvirt', 'hw_disk_discard', 'bogus'),
    ('libvirt', 'virt_type', 'bogus'),
    (None, 'preallocate_images', 'bogus'),
    ('compute', 'max_concurrent_disk_ops', -1),
    ('libvirt', 'volume_clear_size', -1),
    ('imagebackend', 'qemu_img_address_space_limit', 0),
    ('imagebackend', 'qemu_img_cpu_time_limit', 0),
    ('imagebackend', 'max_image_virtual_size_gb', -1),
    ('ephemeral_storage_encryption', 'key_size', 0),
    ('ephemeral_storage_encryption', 'default_format', 'plain'),
])
def test_choices_and_bounds_enforced(conf, group, name, value):
    with pytest.raises(ValueError):
        conf.set_override(name, value, group=group)


def test_valid_override_accepted(conf):
    conf.set_override('images_type', 'lvm', group='libvirt')
    conf.set_override('thin_pool', 'pool0', group='imagebackend')
    assert conf.libvirt.images_type == 'lvm'
    assert conf.imagebackend.thin_pool == 'pool0'


def test_deprecated_names_read_from_config_file(tmp_path):
    # Nova's deprecated_name/deprecated_group were copied too.
    path = tmp_path / 'nova.conf'
    path.write_text('[DEFAULT]\nimage_cache_subdirectory_name = _cache\n')
    conf = config.register_opts(cfg.ConfigOpts())
    conf(['--config-file', str(path)])
    assert conf.image_cache.subdirectory_name == '_cache'


def test_pybasedir_without_nova(monkeypatch):
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
    here = os.path.dirname(os.path.abspath(config.__file__))
    assert config._nova_pybasedir() == os.path.dirname(here)


def test_pybasedir_matches_nova_formula(monkeypatch, tmp_path):
    # Nova computes abspath(join(dirname(nova/conf/paths.py), '../../')).
    pkg = tmp_path / 'site' / 'nova'
    spec = importlib.machinery.ModuleSpec('nova', None, is_package=True)
    spec.submodule_search_locations = [str(pkg)]
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name: spec if name == 'nova' else None)
    nova_file = os.path.join(str(pkg), 'conf', 'paths.py')
    expected = os.path.abspath(os.path.join(os.path.dirname(nova_file),
                                            '../../'))
    assert expected == str(tmp_path / 'site')
    assert config._nova_pybasedir() == expected


NOVA_WHEEL_GLOB = os.path.join(os.path.dirname(__file__), '..', '..',
                               '.venv', 'nova-wheel', 'nova-34.0.0-*.whl')
NOVA_CONF_MODULES = ('paths', 'compute', 'libvirt', 'imagecache',
                     'workarounds', 'ephemeral_storage')


@pytest.fixture
def nova_conf_modules(tmp_path, monkeypatch):
    """Nova 34's own conf modules, loaded from its wheel (tools/bootstrap.sh
    downloads it). They import only oslo.config and each other."""
    wheels = glob.glob(NOVA_WHEEL_GLOB)
    assert wheels, 'Nova wheel missing: run tools/bootstrap.sh'
    with zipfile.ZipFile(wheels[0]) as z:
        for name in NOVA_CONF_MODULES:
            z.extract(f'nova/conf/{name}.py', tmp_path)
    for name, path in (('nova', tmp_path / 'nova'),
                       ('nova.conf', tmp_path / 'nova' / 'conf')):
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(path)]
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
    for name in NOVA_CONF_MODULES:
        monkeypatch.delitem(sys.modules, f'nova.conf.{name}', raising=False)
    # pybasedir's default is computed at import, where Nova is found; in
    # real life Nova is installed before anything imports imagebackend.
    importlib.reload(config)
    yield [importlib.import_module(f'nova.conf.{n}')
           for n in NOVA_CONF_MODULES]
    monkeypatch.undo()
    importlib.reload(config)


@pytest.mark.parametrize('nova_first', [True, False])
def test_coexists_with_real_nova(nova_first, nova_conf_modules):
    modules = nova_conf_modules
    conf = cfg.ConfigOpts()
    if not nova_first:
        config.register_opts(conf)
    for module in modules:
        module.register_opts(conf)
    config.register_opts(conf)
    conf([])
    assert conf.libvirt.images_type == 'default'
    assert conf.ephemeral_storage_encryption.cipher == 'aes-xts-plain64'


def test_ephemeral_storage_encryption_is_novas_whole_group(
        nova_conf_modules):
    # The whole group is copied (Nova's Image refuses backends by it and
    # the Nova face passes it through): the same options, in Nova's order,
    # each equal to Nova's, under Nova's group title.
    ephemeral = nova_conf_modules[NOVA_CONF_MODULES.index(
        'ephemeral_storage')]
    [(group, opts)] = ephemeral.list_opts().items()
    assert group.name == config.ephemeral_storage_encryption_group.name
    assert group.title == config.ephemeral_storage_encryption_group.title
    assert opts == config.EPHEMERAL_STORAGE_ENCRYPTION_OPTS
