"""driver.flows and driver.migration, per disk, on ImageBackendFixture.

Unit tests: a real ``imagebackend.Backend(conf=host)`` hands out the
fixture's fakes; nothing touches storage and no template function runs.
Where a flow reads ``backend.records`` the records are put into a
``MemoryStore`` here; the fixture is told which disks exist (and on which
backend their record says they are).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
from unittest import mock

import fixtures
import pytest

import imagebackend
from imagebackend import exception
from imagebackend import records as records_mod
from imagebackend import transport as transport_mod
from imagebackend.backends import flat, qcow2
from imagebackend.fixture import ImageBackendFixture, ImageCall, TemplateCall
from imagebackend.records import DiskRecord, MemoryStore

from driver import flows
from driver import instance as instance_mod
from driver import migration
from driver import templates

MiB = 1024 ** 2
GiB = 1024 ** 3
CTX = mock.sentinel.context
SRC = 'src-host'

# Methods that change a disk or what it depends on.
MUTATING = ('create_from_image', 'create_from_func', 'create_empty', 'cache',
            'resize_image', 'delete', 'remove_disk', 'create_snap',
            'rollback_to_snap', 'remove_snap', 'check_backing_from_image',
            'check_backing_from_func', 'settle', 'send_to')


@pytest.fixture
def make_fx(request):
    """ImageBackendFixture(**kwargs), set up for this test."""
    def make(**kwargs):
        fixture = ImageBackendFixture(**kwargs)
        fixture.setUp()
        request.addfinalizer(fixture.cleanUp)
        return fixture
    return make


@pytest.fixture
def fx(make_fx):
    return make_fx()


def flat_host(host):
    host.set_override('use_cow_images', False)
    return host


def make_instance(root_gb=1, ephemeral_gb=0, swap=0, config_drive=False,
                  image_ref='img-1', os_type='linux'):
    return instance_mod.Instance(
        image_ref=image_ref, name='vm', os_type=os_type,
        config_drive=config_drive,
        flavor=instance_mod.Flavor(root_gb=root_gb, ephemeral_gb=ephemeral_gb,
                                   swap=swap))


def record(inst, name, backend='qcow2', source=('image', 'img-1'),
           size=GiB, state=records_mod.CREATED, fmt=None, backing=None):
    """A record as the source host wrote it."""
    if fmt is None:
        fmt = 'qcow2' if backend == 'qcow2' else 'raw'
    return DiskRecord(
        instance=inst.uuid, name=name, backend=backend, format=fmt,
        location=f'/source/instances/{inst.uuid}/{name}',
        source_type=source[0], source_id=source[1],
        virtual_size=size if state == records_mod.CREATED else None,
        state=state, backing=backing,
        backing_format='raw' if backing else None,
        provenance={'path': 'native'})


def give_record(fx, name, rec):
    """Make the fake for ``name`` report ``rec`` as its record (the fixture
    sets ``record`` as a property of each fake's own class)."""
    type(fx.disks[name]).record = property(lambda _disk: rec)


def bound(call, method):
    """A recorded call's arguments by parameter name."""
    args, kwargs = call
    sig = inspect.signature(getattr(imagebackend.Image, method))
    return sig.bind(None, *args, **kwargs).arguments


def assert_kept(fx, name, check, grown):
    """A kept disk: settled and its backing checked (in either order), then,
    if grown, a resize snapshot before the resize (and, where a later grow
    could fail, an undo snapshot taken before it and dropped after it);
    nothing else changed."""
    done = mutations(fx, name)
    assert sorted(done[:2]) == sorted([check, 'settle']), (name, done)
    if not grown:
        assert done[2:] == [], (name, done)
        return
    snaps = [c for c in fx.calls(name) if c[0] in ('create_snap',
                                                   'remove_snap')]
    if len(snaps) == 1:
        assert done[2:] == ['create_snap', 'resize_image'], (name, done)
        assert snaps[0][1] == ('nova-resize',)
        return
    assert done[2:] == ['create_snap', 'create_snap', 'resize_image',
                        'remove_snap'], (name, done)
    undo = snaps[1][1][0]
    assert snaps[0][1] == ('nova-resize',) and undo.startswith('ib-undo-')
    assert snaps[2][1] == (undo,) and snaps[2][2] == {'ignore_errors': True}


def call_names(fx, name):
    return [c[0] for c in fx.calls(name)]


def mutations(fx, name):
    return [c[0] for c in fx.calls(name) if c[0] in MUTATING]


def eph(conf, gib, idx, fs=None):
    return templates.ephemeral(conf, gib * GiB, f'ephemeral{idx}', 'linux',
                               specified_fs=fs)


def record_calls(fx, names, method, log):
    """Log ``(method, name, image_type)`` when ``method`` runs on each fake,
    keeping the fake's behaviour."""
    for name in names:
        disk = fx.disks[name]
        meth = getattr(disk, method)
        original = meth.side_effect

        def side_effect(*args, _name=name, _disk=disk, _orig=original,
                        **kwargs):
            log.append((method, _name, _disk.image_type))
            if _orig is not None:
                return _orig(*args, **kwargs)
            return None
        meth.side_effect = side_effect


# == spawn ====================================================================

def test_spawn_creates_every_disk_in_order(fx, host):
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(root_gb=2, ephemeral_gb=1, swap=64,
                         config_drive=True)
    bdi = {'ephemerals': [{'size': 3, 'guest_format': 'xfs'}]}
    mapping = instance_mod.disk_mapping(inst, bdi)

    created = flows.spawn(backend, CTX, inst, mapping, bdi)

    names = ['disk', 'disk.local', 'disk.eph0', 'disk.swap', 'disk.config']
    assert created == names
    assert fx.created_disks == names
    assert fx.image_calls == [ImageCall('disk', 'img-1', 2 * GiB, None)]
    assert fx.template_calls == [
        TemplateCall('disk.local', 'ephemeral_1G_fs-ext4_label-ephemeral0',
                     GiB, eph(host, 1, 0)),
        TemplateCall('disk.eph0', 'ephemeral_3G_fs-xfs_label-ephemeral0',
                     3 * GiB, eph(host, 3, 0, 'xfs')),
        TemplateCall('disk.swap', 'swap_64M', 64 * MiB,
                     templates.Swap(64 * MiB)),
        TemplateCall('disk.config', f'configdrive_{inst.uuid}', None,
                     templates.ConfigDrive(inst)),
    ]
    fx.disks['disk'].create_from_image.assert_called_once_with(
        CTX, 'img-1', 2 * GiB, None)
    for name in names[1:-1]:
        assert call_names(fx, name) == ['exists', 'create_from_func'], name
    assert call_names(fx, 'disk') == ['exists', 'create_from_image']
    # Per-instance content: made from what the template writes, no template.
    assert call_names(fx, 'disk.config') == ['exists', 'create_from_content']
    # Every disk on the host's type, except the config drive (a file where
    # storage is not shared).
    assert {n: fx.disks[n].image_type for n in names} == {
        'disk': 'qcow2', 'disk.local': 'qcow2', 'disk.eph0': 'qcow2',
        'disk.swap': 'qcow2', 'disk.config': 'flat'}
    assert {n: fx.disks[n].disk_info_mapping for n in names} == {
        n: mapping[n] for n in names}


def test_spawn_creates_only_missing_disks(make_fx, host):
    fx = make_fx(existing=['disk', 'disk.swap'])
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(ephemeral_gb=1, swap=64)
    mapping = instance_mod.disk_mapping(inst)

    assert flows.spawn(backend, CTX, inst, mapping) == ['disk.local']

    assert fx.created_disks == ['disk.local']
    assert fx.image_calls == []
    assert [c.name for c in fx.template_calls] == ['disk.local']
    assert call_names(fx, 'disk') == ['exists']
    assert call_names(fx, 'disk.swap') == ['exists']
    # A second spawn creates nothing.
    assert flows.spawn(backend, CTX, inst, mapping) == []
    assert fx.created_disks == ['disk.local']


def test_spawn_boot_from_volume_creates_no_root(fx, host):
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(ephemeral_gb=1)
    bdi = {'block_device_mapping': [{'boot_index': 0,
                                     'mount_device': '/dev/vda'}]}
    mapping = instance_mod.disk_mapping(inst, bdi)
    assert flows.spawn(backend, CTX, inst, mapping, bdi) == ['disk.local']
    assert fx.image_calls == []
    assert 'disk' not in fx.disks


def test_spawn_failure_deletes_only_what_this_call_created(make_fx, host):
    fx = make_fx(existing=['disk.local'])
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(ephemeral_gb=1, swap=64, config_drive=True)
    bdi = {'ephemerals': [{'size': 1}]}
    mapping = instance_mod.disk_mapping(inst, bdi)
    # Order: disk (created), disk.local (exists), disk.eph0 (created),
    # disk.swap: the third create, fails.
    fx.disks['disk.swap'].create_from_func.side_effect = \
        exception.ProcessError(cmd='mkswap', exit_code=1)
    deleted = []
    record_calls(fx, ['disk', 'disk.local', 'disk.eph0', 'disk.swap'],
                 'delete', deleted)

    with pytest.raises(exception.ProcessError):
        flows.spawn(backend, CTX, inst, mapping, bdi)

    # Newest first; the pre-existing disk and the failed one untouched.
    assert [d[1] for d in deleted] == ['disk.eph0', 'disk']
    assert call_names(fx, 'disk') == ['exists', 'create_from_image',
                                      'delete']
    assert call_names(fx, 'disk.eph0') == ['exists', 'create_from_func',
                                           'delete']
    assert call_names(fx, 'disk.local') == ['exists']
    assert call_names(fx, 'disk.swap') == ['exists', 'create_from_func']
    assert 'disk.config' not in fx.disks or \
        mutations(fx, 'disk.config') == []
    assert fx.disks['disk'].exists() is False
    assert fx.disks['disk.eph0'].exists() is False
    assert fx.disks['disk.local'].exists() is True


def test_spawn_failure_on_first_disk_deletes_nothing(fx, host):
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(swap=64)
    fx.disks['disk'].create_from_image.side_effect = \
        exception.ImageNotFound(image_id='img-1')
    with pytest.raises(exception.ImageNotFound):
        flows.spawn(backend, CTX, inst, instance_mod.disk_mapping(inst))
    assert call_names(fx, 'disk') == ['exists', 'create_from_image']
    assert 'disk.swap' not in fx.disks or mutations(fx, 'disk.swap') == []


def test_spawn_unknown_disk_name_creates_nothing(fx, host):
    backend = imagebackend.Backend(conf=host)
    inst = make_instance()
    mapping = dict(instance_mod.disk_mapping(inst), **{'disk.bogus': {}})
    with pytest.raises(exception.InvalidInput):
        flows.spawn(backend, CTX, inst, mapping)
    assert fx.created_disks == []
    assert dict(fx.disks) == {}


# == finish_migration =========================================================

RESIZED = ['disk', 'disk.local', 'disk.eph0', 'disk.eph1']


def resized_instance():
    """After a resize to root 4G, flavor ephemeral 3G; BDM ephs 2G, 5G."""
    inst = make_instance(root_gb=4, ephemeral_gb=3)
    bdi = {'ephemerals': [{'size': 2}, {'size': 5, 'guest_format': 'ext3'}]}
    return inst, bdi, instance_mod.disk_mapping(inst, bdi)


def copied_disks(fx, sizes):
    for name, size in sizes.items():
        fx.set_size(name, size)


def test_finish_migration_grows_root_local_and_every_bdm_ephemeral(make_fx,
                                                                   host):
    # The seed's bug: Nova grew only disk and disk.local, never disk.ephN.
    fx = make_fx(existing=RESIZED)
    backend = imagebackend.Backend(conf=host)
    inst, bdi, mapping = resized_instance()
    copied_disks(fx, {'disk': GiB, 'disk.local': GiB, 'disk.eph0': GiB,
                      'disk.eph1': 3 * GiB})

    done = flows.finish_migration(backend, CTX, inst, mapping, bdi,
                                  source_host=SRC)

    assert done == {'created': [], 'grown': RESIZED, 'checked': RESIZED}
    new = {'disk': 4 * GiB, 'disk.local': 3 * GiB, 'disk.eph0': 2 * GiB,
           'disk.eph1': 5 * GiB}
    for name, size in new.items():
        fx.disks[name].resize_image.assert_called_once_with(size)
        assert fx.disks[name].virtual_size() == size
    assert fx.created_disks == []
    assert fx.image_calls == []
    assert fx.template_calls == []


def test_finish_migration_snapshot_before_resize_on_grown_disks_only(make_fx,
                                                                     host):
    fx = make_fx(existing=RESIZED)
    backend = imagebackend.Backend(conf=host)
    inst, bdi, mapping = resized_instance()
    # disk and disk.eph1 already have their new sizes.
    copied_disks(fx, {'disk': 4 * GiB, 'disk.local': GiB,
                      'disk.eph0': GiB, 'disk.eph1': 5 * GiB})

    done = flows.finish_migration(backend, CTX, inst, mapping, bdi,
                                  source_host=SRC)

    assert done['grown'] == ['disk.local', 'disk.eph0']
    assert done['checked'] == RESIZED
    for name in ('disk.local', 'disk.eph0'):
        assert_kept(fx, name, 'check_backing_from_func', grown=True)
        assert fx.disks[name].create_snap.call_args_list[0] == \
            mock.call('nova-resize')
    # Only the last grow needs no undo snapshot: nothing comes after it.
    assert fx.disks['disk.local'].create_snap.call_count == 2
    fx.disks['disk.eph0'].create_snap.assert_called_once_with('nova-resize')
    for name, check in (('disk', 'check_backing_from_image'),
                        ('disk.eph1', 'check_backing_from_func')):
        assert_kept(fx, name, check, grown=False)
        fx.disks[name].create_snap.assert_not_called()
        fx.disks[name].resize_image.assert_not_called()


@pytest.mark.parametrize('shrinking', RESIZED)
def test_finish_migration_refuses_any_shrink_before_changing_anything(
        make_fx, host, shrinking):
    fx = make_fx(existing=RESIZED + ['disk.config'])
    backend = imagebackend.Backend(conf=host)
    inst, bdi, _ = resized_instance()
    inst.flavor.swap = 64
    inst.config_drive = True
    mapping = instance_mod.disk_mapping(inst, bdi)
    # Everything else would grow; the swap is missing (would be created).
    sizes = {'disk': GiB, 'disk.local': GiB, 'disk.eph0': GiB,
             'disk.eph1': GiB}
    sizes[shrinking] = 6 * GiB
    copied_disks(fx, sizes)

    with pytest.raises(exception.CannotShrink) as err:
        flows.finish_migration(backend, CTX, inst, mapping, bdi,
                               source_host=SRC)

    assert err.value.kwargs['current'] == 6 * GiB
    for name in fx.disks:
        assert mutations(fx, name) == [], name
    assert fx.created_disks == []
    assert fx.image_calls == []
    assert fx.template_calls == []
    assert fx.disks[shrinking].virtual_size() == 6 * GiB


def test_finish_migration_recreates_existing_swap_at_new_size(make_fx, host):
    fx = make_fx(existing=['disk', 'disk.swap'])
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(swap=512)
    mapping = instance_mod.disk_mapping(inst)
    copied_disks(fx, {'disk': GiB, 'disk.swap': 256 * MiB})

    done = flows.finish_migration(backend, CTX, inst, mapping,
                                  source_host=SRC)

    assert done == {'created': ['disk.swap'], 'grown': [],
                    'checked': ['disk']}
    assert mutations(fx, 'disk.swap') == ['delete', 'create_from_func']
    fx.disks['disk.swap'].create_from_func.assert_called_once_with(
        CTX, templates.Swap(512 * MiB), 'swap_512M', 512 * MiB, SRC)
    assert fx.template_calls == [TemplateCall(
        'disk.swap', 'swap_512M', 512 * MiB, templates.Swap(512 * MiB))]
    assert fx.disks['disk.swap'].virtual_size() == 512 * MiB
    fx.disks['disk.swap'].resize_image.assert_not_called()
    fx.disks['disk.swap'].check_backing_from_func.assert_not_called()


def test_finish_migration_recreated_swap_uses_todays_template(make_fx, host):
    # The swap's record names the template it was first made from; a
    # disposable disk is made afresh, from today's description.
    fx = make_fx(existing=['disk', 'disk.swap'])
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(swap=512)
    mapping = instance_mod.disk_mapping(inst)
    copied_disks(fx, {'disk': GiB, 'disk.swap': 256 * MiB})
    give_record(fx, 'disk.swap', record(inst, 'disk.swap',
                                        source=('func', 'swap_256M'),
                                        size=256 * MiB))

    flows.finish_migration(backend, CTX, inst, mapping, source_host=SRC)

    assert mutations(fx, 'disk.swap') == ['delete', 'create_from_func']
    fx.disks['disk.swap'].create_from_func.assert_called_once_with(
        CTX, templates.Swap(512 * MiB), 'swap_512M', 512 * MiB, SRC)


def test_finish_migration_failed_grow_undoes_grows_and_remakes_old_swap(
        make_fx, host):
    """Grows come last; when one fails, the grows before it go back to the
    snapshot taken just before them (a no-op where a backend keeps none),
    and the swap made afresh is replaced by the old one, as its record
    says (a swap's contents carry nothing)."""
    fx = make_fx(existing=['disk', 'disk.local', 'disk.swap'])
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(root_gb=2, ephemeral_gb=3, swap=512)
    mapping = instance_mod.disk_mapping(inst)
    copied_disks(fx, {'disk': GiB, 'disk.local': GiB,
                      'disk.swap': 256 * MiB})
    give_record(fx, 'disk.swap', record(inst, 'disk.swap',
                                        source=('func', 'swap_256M'),
                                        size=256 * MiB))

    def full(*_args, **_kwargs):
        raise exception.ProcessError(cmd='lvextend', exit_code=5)
    fx.disks['disk.local'].resize_image.side_effect = full
    log = []
    for method in ('delete', 'create_from_func', 'resize_image'):
        record_calls(fx, ['disk', 'disk.local', 'disk.swap'], method, log)

    with pytest.raises(exception.ProcessError):
        flows.finish_migration(backend, CTX, inst, mapping)

    # Grows last, after the swap was made afresh; undone newest first.
    assert [(m, n) for m, n, _t in log] == [
        ('delete', 'disk.swap'), ('create_from_func', 'disk.swap'),
        ('resize_image', 'disk'), ('resize_image', 'disk.local'),
        ('delete', 'disk.swap'), ('create_from_func', 'disk.swap')]

    # The swap: old deleted, new made, then (undo) new deleted, old remade.
    assert mutations(fx, 'disk.swap') == ['delete', 'create_from_func',
                                          'delete', 'create_from_func']
    made = fx.disks['disk.swap'].create_from_func.call_args_list
    assert made == [
        mock.call(CTX, templates.Swap(512 * MiB), 'swap_512M', 512 * MiB,
                  None),
        mock.call(CTX, templates.Swap(256 * MiB), 'swap_256M', 256 * MiB,
                  None)]
    # The root grew before the failure: back to its undo snapshot.
    root = [c for c in fx.calls('disk') if c[0] in MUTATING][2:]
    undo = root[1][1][0]
    assert undo.startswith('ib-undo-')
    assert root == [mock.call.create_snap('nova-resize'),
                    mock.call.create_snap(undo),
                    mock.call.resize_image(2 * GiB),
                    mock.call.rollback_to_snap(undo),
                    mock.call.remove_snap(undo, ignore_errors=True)]


def test_finish_migration_creates_a_missing_swap(make_fx, host):
    fx = make_fx(existing=['disk'])
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(swap=128)
    mapping = instance_mod.disk_mapping(inst)
    fx.set_size('disk', GiB)

    done = flows.finish_migration(backend, CTX, inst, mapping,
                                  source_host=SRC)

    assert done == {'created': ['disk.swap'], 'grown': [],
                    'checked': ['disk']}
    assert mutations(fx, 'disk.swap') == ['create_from_func']
    fx.disks['disk.swap'].create_from_func.assert_called_once_with(
        CTX, templates.Swap(128 * MiB), 'swap_128M', 128 * MiB, SRC)
    assert fx.created_disks == ['disk.swap']


def test_finish_migration_creates_missing_root_with_fallback(make_fx, host):
    fx = make_fx(existing=['disk.local'])
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(root_gb=2, ephemeral_gb=1)
    fx.set_size('disk.local', GiB)
    done = flows.finish_migration(backend, CTX, inst,
                                  instance_mod.disk_mapping(inst),
                                  source_host=SRC)
    assert done == {'created': ['disk'], 'grown': [],
                    'checked': ['disk.local']}
    assert fx.image_calls == [ImageCall('disk', 'img-1', 2 * GiB, SRC)]


def test_finish_migration_checks_backing_of_every_kept_disk(make_fx, host):
    fx = make_fx(existing=RESIZED + ['disk.config'])
    backend = imagebackend.Backend(conf=host)
    inst, bdi, _ = resized_instance()
    inst.config_drive = True
    mapping = instance_mod.disk_mapping(inst, bdi)
    copied_disks(fx, {'disk': 4 * GiB, 'disk.local': 3 * GiB,
                      'disk.eph0': 2 * GiB, 'disk.eph1': 5 * GiB,
                      'disk.config': MiB})

    done = flows.finish_migration(backend, CTX, inst, mapping, bdi,
                                  source_host=SRC)

    assert done['checked'] == RESIZED + ['disk.config']
    fx.disks['disk'].check_backing_from_image.assert_called_once_with(
        CTX, 'img-1', SRC)
    expected = {
        'disk.local': eph(host, 3, 0),
        'disk.eph0': eph(host, 2, 0),
        'disk.eph1': eph(host, 5, 1, 'ext3'),
        'disk.config': templates.ConfigDrive(inst),
    }
    for name, tpl in expected.items():
        fx.disks[name].check_backing_from_func.assert_called_once_with(
            CTX, tpl, tpl.cache_name, SRC)
    assert_kept(fx, 'disk', 'check_backing_from_image', grown=False)
    for name in expected:
        assert_kept(fx, name, 'check_backing_from_func', grown=False)
    assert fx.created_disks == []


def test_finish_migration_checks_backing_named_by_the_record(make_fx, host):
    # Resize changed the ephemeral size, so today's template name differs
    # from the one the disk was made on: the record's name is restored, and
    # never by regenerating it with today's function.
    fx = make_fx(existing=['disk', 'disk.local', 'disk.eph0'])
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(root_gb=2, ephemeral_gb=2, image_ref='img-new')
    bdi = {'ephemerals': [{'size': 1}]}
    mapping = instance_mod.disk_mapping(inst, bdi)
    copied_disks(fx, {'disk': GiB, 'disk.local': GiB, 'disk.eph0': GiB})
    old_local = 'ephemeral_1G_fs-ext4_label-ephemeral0'
    give_record(fx, 'disk', record(inst, 'disk',
                                   source=('image', 'img-old')))
    give_record(fx, 'disk.local', record(inst, 'disk.local',
                                         source=('func', old_local),
                                         backing=old_local))
    # disk.eph0 was made on the template it is described with today.
    same = eph(host, 1, 0)
    give_record(fx, 'disk.eph0', record(inst, 'disk.eph0',
                                        source=('func', same.cache_name)))

    done = flows.finish_migration(backend, CTX, inst, mapping, bdi,
                                  source_host=SRC)

    assert done['grown'] == ['disk', 'disk.local']
    fx.disks['disk'].check_backing_from_image.assert_called_once_with(
        CTX, 'img-old', SRC)
    check = fx.disks['disk.local'].check_backing_from_func
    check.assert_called_once_with(CTX, mock.ANY, old_local, SRC)
    func = bound(check.call_args, 'check_backing_from_func')['func']
    assert func != eph(host, 2, 0)
    with pytest.raises(exception.ImageNotFound):
        func('/target')
    fx.disks['disk.eph0'].check_backing_from_func.assert_called_once_with(
        CTX, same, same.cache_name, SRC)
    fx.disks['disk.local'].resize_image.assert_called_once_with(2 * GiB)
    fx.disks['disk'].resize_image.assert_called_once_with(2 * GiB)
    assert fx.created_disks == []


def test_finish_migration_uses_the_records_backend_never_converts(make_fx,
                                                                  host):
    # The seed's bug: a destination whose images_type / use_cow_images
    # differ from the source reinterpreted or converted migrated disks.
    fx = make_fx(existing=['disk', 'disk.local'])
    backend = imagebackend.Backend(conf=flat_host(host))
    fx.set_backend('disk', 'qcow2')
    inst = make_instance(root_gb=2, ephemeral_gb=1)
    mapping = instance_mod.disk_mapping(inst)
    copied_disks(fx, {'disk': GiB, 'disk.local': GiB})
    used = []
    for method in ('check_backing_from_image', 'check_backing_from_func',
                   'settle', 'create_snap', 'resize_image'):
        record_calls(fx, ['disk', 'disk.local'], method, used)

    done = flows.finish_migration(backend, CTX, inst, mapping,
                                  source_host=SRC)

    assert done == {'created': [], 'grown': ['disk'],
                    'checked': ['disk', 'disk.local']}
    assert sorted(u for u in used if u[1] == 'disk') == sorted([
        ('check_backing_from_image', 'disk', 'qcow2'),
        ('settle', 'disk', 'qcow2'),
        ('create_snap', 'disk', 'qcow2'),
        ('resize_image', 'disk', 'qcow2')])
    # The host's own type for a disk recorded on it.
    assert sorted(u for u in used if u[1] == 'disk.local') == sorted([
        ('check_backing_from_func', 'disk.local', 'flat'),
        ('settle', 'disk.local', 'flat')])
    disk = fx.disks['disk']
    assert disk.image_type == 'qcow2'
    assert disk.capabilities == qcow2.Qcow2.capabilities
    assert disk.driver_format == 'qcow2'
    assert_kept(fx, 'disk', 'check_backing_from_image', grown=True)
    assert fx.created_disks == []


def test_finish_migration_failure_deletes_only_created(make_fx, host):
    fx = make_fx(existing=['disk', 'disk.local'])
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(ephemeral_gb=1, swap=64, config_drive=True)
    mapping = instance_mod.disk_mapping(inst)
    copied_disks(fx, {'disk': GiB, 'disk.local': GiB})
    fx.disks['disk.config'].create_from_content.side_effect = \
        exception.ProcessError(cmd='genisoimage', exit_code=1)

    with pytest.raises(exception.ProcessError):
        flows.finish_migration(backend, CTX, inst, mapping,
                               source_host=SRC)

    assert mutations(fx, 'disk.swap') == ['create_from_func', 'delete']
    assert_kept(fx, 'disk', 'check_backing_from_image', grown=False)
    assert_kept(fx, 'disk.local', 'check_backing_from_func', grown=False)


# == finish_revert_migration / confirm_migration / destroy_disks ==============

def store_with(inst, *recs):
    store = MemoryStore()
    for rec in recs:
        store.put(rec)
    return store


def test_finish_revert_migration_rolls_back_created_disks(make_fx, host):
    inst = make_instance()
    store = store_with(inst, record(inst, 'disk'),
                       record(inst, 'disk.local', source=('func', 'x')),
                       record(inst, 'disk.eph0', state=records_mod.CREATING))
    fx = make_fx(existing=['disk', 'disk.local'])
    backend = imagebackend.Backend(conf=host, records=store)

    flows.finish_revert_migration(backend, inst)

    for name in ('disk', 'disk.local'):
        assert mutations(fx, name) == ['rollback_to_snap', 'remove_snap']
        fx.disks[name].rollback_to_snap.assert_called_once_with(
            'nova-resize')
        fx.disks[name].remove_snap.assert_called_once_with(
            'nova-resize', ignore_errors=True)
    assert 'disk.eph0' not in fx.disks


def test_confirm_migration_drops_the_resize_snapshot(make_fx, host):
    inst = make_instance()
    store = store_with(inst, record(inst, 'disk'),
                       record(inst, 'disk.swap', state=records_mod.CREATING))
    fx = make_fx(existing=['disk'])
    backend = imagebackend.Backend(conf=host, records=store)

    flows.confirm_migration(backend, inst)

    assert mutations(fx, 'disk') == ['remove_snap']
    fx.disks['disk'].remove_snap.assert_called_once_with(
        'nova-resize', ignore_errors=True)
    assert 'disk.swap' not in fx.disks


def test_destroy_disks_deletes_every_recorded_disk(make_fx, host):
    inst = make_instance()
    store = store_with(
        inst, record(inst, 'disk'),
        record(inst, 'disk.config', backend='flat', source=('func', 'c')),
        record(inst, 'disk.local', backend='flat',
               state=records_mod.CREATING))
    fx = make_fx(existing=['disk', 'disk.config'])
    fx.set_backend('disk.config', 'flat')
    backend = imagebackend.Backend(conf=host, records=store)
    deleted = []
    record_calls(fx, ['disk', 'disk.config', 'disk.local'], 'delete',
                 deleted)

    assert flows.destroy_disks(backend, inst) == ['disk', 'disk.config',
                                                  'disk.local']
    # A creation that died is removed on the backend its record names.
    assert deleted == [('delete', 'disk', 'qcow2'),
                       ('delete', 'disk.config', 'flat'),
                       ('delete', 'disk.local', 'flat')]
    for name in ('disk', 'disk.config', 'disk.local'):
        assert mutations(fx, name) == ['delete']


# == pre_live_migration =======================================================

def live_records(inst, backend='qcow2'):
    local = 'ephemeral_1G_fs-ext4_label-ephemeral0'
    return {
        'disk': record(inst, 'disk', backend, ('image', 'img-old'),
                       size=3 * GiB,
                       backing='0123456789abcdef0123456789abcdef01234567'),
        'disk.local': record(inst, 'disk.local', backend, ('func', local),
                             size=GiB, backing=local),
        'disk.swap': record(inst, 'disk.swap', backend,
                            ('func', 'swap_64M'), size=64 * MiB,
                            backing='swap_64M'),
        'disk.config': record(inst, 'disk.config', 'flat',
                              ('func', f'configdrive_{inst.uuid}'),
                              size=470 * 1024),
    }


def live_instance():
    inst = make_instance(root_gb=3, ephemeral_gb=1, swap=64,
                         config_drive=True, image_ref='img-1')
    return inst, instance_mod.disk_mapping(inst)


def test_pre_live_migration_recreates_disks_as_recorded(fx, host):
    backend = imagebackend.Backend(conf=host)
    inst, mapping = live_instance()
    recs = live_records(inst)

    created = flows.pre_live_migration(backend, CTX, inst, mapping,
                                       recs.values(), source_host=SRC)

    assert created == ['disk', 'disk.config', 'disk.local', 'disk.swap']
    assert sorted(fx.created_disks) == sorted(created)
    # The image the record names (deleted upstream: the source host is the
    # fallback the cache side-loads from), at the recorded size.
    assert fx.image_calls == [ImageCall('disk', 'img-old', 3 * GiB, SRC)]
    fx.disks['disk.local'].create_from_func.assert_called_once_with(
        CTX, eph(host, 1, 0), 'ephemeral_1G_fs-ext4_label-ephemeral0', GiB,
        SRC)
    fx.disks['disk.swap'].create_from_func.assert_called_once_with(
        CTX, templates.Swap(64 * MiB), 'swap_64M', 64 * MiB, SRC)
    # No backing in a cache: an empty disk shaped like the record.
    fx.disks['disk.config'].create_empty.assert_called_once_with(
        recs['disk.config'])
    assert mutations(fx, 'disk') == ['create_from_image']
    assert mutations(fx, 'disk.local') == ['create_from_func']
    assert mutations(fx, 'disk.swap') == ['create_from_func']
    assert mutations(fx, 'disk.config') == ['create_empty']
    assert {n: fx.disks[n].image_type for n in created} == {
        'disk': 'qcow2', 'disk.config': 'flat', 'disk.local': 'qcow2',
        'disk.swap': 'qcow2'}
    assert fx.disks['disk.config'].virtual_size() == 470 * 1024


def test_pre_live_migration_flat_disks_are_made_empty(fx, host):
    backend = imagebackend.Backend(conf=flat_host(host))
    inst, mapping = live_instance()
    recs = live_records(inst, backend='flat')
    recs['disk'] = dataclasses.replace(recs['disk'], format='qcow2',
                                       backing=None)

    created = flows.pre_live_migration(backend, CTX, inst, mapping,
                                       recs.values(), source_host=SRC)

    assert created == ['disk', 'disk.config', 'disk.local', 'disk.swap']
    assert fx.image_calls == []
    assert fx.template_calls == []
    for name in created:
        fx.disks[name].create_empty.assert_called_once_with(recs[name])
        assert mutations(fx, name) == ['create_empty'], name
        assert fx.disks[name].image_type == 'flat'
        assert fx.disks[name].virtual_size() == recs[name].virtual_size
    # The recorded format, not the host's default.
    assert fx.disks['disk'].driver_format == 'qcow2'
    assert fx.disks['disk.local'].driver_format == 'raw'


def test_pre_live_migration_qcow2_records_on_a_flat_host(fx, host):
    backend = imagebackend.Backend(conf=flat_host(host))
    inst, mapping = live_instance()
    recs = live_records(inst)
    used = []
    record_calls(fx, ['disk', 'disk.local', 'disk.swap'],
                 'create_from_image', used)
    record_calls(fx, ['disk', 'disk.local', 'disk.swap'],
                 'create_from_func', used)

    flows.pre_live_migration(backend, CTX, inst, mapping, recs.values(),
                             source_host=SRC)

    assert used == [('create_from_image', 'disk', 'qcow2'),
                    ('create_from_func', 'disk.local', 'qcow2'),
                    ('create_from_func', 'disk.swap', 'qcow2')]
    assert fx.image_calls == [ImageCall('disk', 'img-old', 3 * GiB, SRC)]
    for name in ('disk', 'disk.local', 'disk.swap'):
        assert fx.disks[name].capabilities == qcow2.Qcow2.capabilities
        fx.disks[name].create_empty.assert_not_called()
    assert fx.disks['disk.config'].image_type == 'flat'
    assert fx.disks['disk.config'].capabilities == flat.Flat.capabilities


def test_pre_live_migration_template_not_regenerated_when_renamed(fx, host):
    # The instance's ephemeral today would be a different template than the
    # one the source disk sits on: that one is side-loaded, never remade.
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(ephemeral_gb=2)
    mapping = instance_mod.disk_mapping(inst)
    old = 'ephemeral_1G_fs-ext4_label-ephemeral0'
    recs = [record(inst, 'disk'),
            record(inst, 'disk.local', source=('func', old), size=GiB)]

    flows.pre_live_migration(backend, CTX, inst, mapping, recs,
                             source_host=SRC)

    (call,) = fx.template_calls
    assert (call.name, call.cache_name, call.size) == ('disk.local', old,
                                                       GiB)
    assert call.func != eph(host, 2, 0)
    with pytest.raises(exception.ImageNotFound):
        call.func('/target')


def test_pre_live_migration_missing_record(fx, host):
    backend = imagebackend.Backend(conf=host)
    inst, mapping = live_instance()
    recs = live_records(inst)
    del recs['disk.swap']
    with pytest.raises(exception.RecordNotFound) as err:
        flows.pre_live_migration(backend, CTX, inst, mapping, recs.values(),
                                 source_host=SRC)
    assert err.value.kwargs['disk_name'] == 'disk.swap'
    assert fx.created_disks == []
    for name in fx.disks:
        assert mutations(fx, name) == [], name


def test_pre_live_migration_incomplete_record(fx, host):
    backend = imagebackend.Backend(conf=host)
    inst, mapping = live_instance()
    recs = live_records(inst)
    recs['disk.swap'] = record(inst, 'disk.swap',
                               source=('func', 'swap_64M'),
                               state=records_mod.CREATING)
    with pytest.raises(exception.IncompleteDisk):
        flows.pre_live_migration(backend, CTX, inst, mapping, recs.values(),
                                 source_host=SRC)
    assert fx.created_disks == []
    for name in fx.disks:
        assert mutations(fx, name) == [], name


def test_pre_live_migration_existing_destination_disk(make_fx, host):
    fx = make_fx(existing=['disk.local'])
    backend = imagebackend.Backend(conf=host)
    inst, mapping = live_instance()
    with pytest.raises(exception.DiskExists):
        flows.pre_live_migration(backend, CTX, inst, mapping,
                                 live_records(inst).values(),
                                 source_host=SRC)
    assert fx.created_disks == []
    for name in fx.disks:
        assert mutations(fx, name) == [], name


def test_pre_live_migration_skips_shared_storage(fx, host, monkeypatch):
    monkeypatch.setattr(qcow2.Qcow2, 'capabilities', dataclasses.replace(
        qcow2.Qcow2.capabilities, shared_storage=True))
    backend = imagebackend.Backend(conf=host)
    inst, mapping = live_instance()
    created = flows.pre_live_migration(backend, CTX, inst, mapping,
                                       live_records(inst).values(),
                                       source_host=SRC)
    assert created == ['disk.config']
    assert fx.image_calls == []
    assert fx.template_calls == []


# == rescue / unrescue ========================================================

def test_rescue_creates_rescue_root_from_rescue_image(fx, host):
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(root_gb=5, ephemeral_gb=1)

    assert flows.rescue(backend, CTX, inst, 'rescue-img') == ['disk.rescue']

    assert fx.image_calls == [ImageCall('disk.rescue', 'rescue-img', None,
                                        None)]
    assert fx.template_calls == []
    assert fx.created_disks == ['disk.rescue']
    # The original root is never opened.
    assert set(fx.disks) == {'disk.rescue'}
    assert fx.disks['disk.rescue'].disk_info_mapping == \
        instance_mod.rescue_mapping(inst)['disk.rescue']


def test_rescue_with_config_drive(fx, host):
    host.set_override('images_type', 'qcow2', group='libvirt')
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(config_drive=True)

    created = flows.rescue(backend, CTX, inst)

    assert created == ['disk.rescue', 'disk.config.rescue']
    assert fx.image_calls == [ImageCall('disk.rescue', 'img-1', None, None)]
    assert fx.template_calls == [TemplateCall(
        'disk.config.rescue', f'configdrive_{inst.uuid}', None,
        templates.ConfigDrive(inst))]
    assert fx.disks['disk.rescue'].image_type == 'qcow2'
    assert fx.disks['disk.config.rescue'].image_type == 'flat'
    assert set(fx.disks) == {'disk.rescue', 'disk.config.rescue'}


def test_rescue_again_creates_nothing_that_exists(make_fx, host):
    fx = make_fx(existing=['disk.rescue'])
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(config_drive=True)
    assert flows.rescue(backend, CTX, inst, 'rescue-img') == [
        'disk.config.rescue']
    assert fx.image_calls == []
    assert call_names(fx, 'disk.rescue') == ['exists']

def test_unrescue_deletes_only_rescue_disks(make_fx, host):
    inst = make_instance(config_drive=True)
    names = ['disk', 'disk.config', 'disk.config.rescue', 'disk.rescue']
    store = store_with(inst, *(record(inst, n) for n in names))
    fx = make_fx(existing=names)
    backend = imagebackend.Backend(conf=host, records=store)

    assert flows.unrescue(backend, inst) == ['disk.config.rescue',
                                             'disk.rescue']

    for name in ('disk.config.rescue', 'disk.rescue'):
        assert mutations(fx, name) == ['delete'], name
    assert 'disk' not in fx.disks
    assert 'disk.config' not in fx.disks


def test_unrescue_removes_a_rescue_disk_whose_creation_died(make_fx, host):
    inst = make_instance()
    store = store_with(inst, record(inst, 'disk'),
                       record(inst, 'disk.rescue', backend='flat',
                              state=records_mod.CREATING))
    fx = make_fx(existing=['disk'])
    backend = imagebackend.Backend(conf=host, records=store)
    deleted = []
    record_calls(fx, ['disk.rescue'], 'delete', deleted)

    assert flows.unrescue(backend, inst) == ['disk.rescue']
    assert deleted == [('delete', 'disk.rescue', 'flat')]
    assert 'disk' not in fx.disks


# == migration.migrate_disks ==================================================

class RecordingTransport:
    """A mock transport that keeps what each put sent."""

    def __init__(self):
        self.mock = mock.Mock(spec=transport_mod.Transport)
        self.sent = {}
        self.mock.put.side_effect = self._put

    def _put(self, host, src, relpath, progress=None):
        with open(src) as f:
            self.sent[(host, relpath)] = (os.path.basename(src), json.load(f))


def migrating_instance(fx_factory, host, shared_qcow2=False):
    inst = make_instance(ephemeral_gb=1, swap=64, config_drive=True)
    bdi = {'ephemerals': [{'size': 1}]}
    mapping = instance_mod.disk_mapping(inst, bdi)
    recs = {
        'disk': record(inst, 'disk'),
        'disk.local': record(inst, 'disk.local',
                             source=('func', 'ephemeral_1G_fs-ext4_label-'
                                             'ephemeral0')),
        'disk.eph0': record(inst, 'disk.eph0', backend='flat',
                            source=('func', 'ephemeral_1G_fs-ext4_label-'
                                            'ephemeral0')),
        'disk.swap': record(inst, 'disk.swap', source=('func', 'swap_64M'),
                            size=64 * MiB),
        'disk.config': record(inst, 'disk.config', backend='flat',
                              source=('func', f'configdrive_{inst.uuid}')),
        'disk.rescue': record(inst, 'disk.rescue',
                              source=('image', 'rescue-img')),
    }
    fx = fx_factory(existing=list(recs))
    for name, rec in recs.items():
        fx.set_backend(name, rec.backend)
    # A disk whose creation died travels nowhere.
    dead = record(inst, 'disk.eph1', state=records_mod.CREATING)
    store = store_with(inst, dead, *recs.values())
    backend = imagebackend.Backend(conf=host, records=store)
    return fx, backend, inst, bdi, mapping, recs


def test_migrate_disks_sends_disks_and_records(make_fx, host):
    fx, backend, inst, bdi, mapping, recs = migrating_instance(make_fx, host)
    transport = RecordingTransport()
    # progress(disk name) gives the callback for that disk's copy.
    progress = mock.Mock(
        side_effect=lambda name: getattr(mock.sentinel, f'progress_{name}'))

    copied = migration.migrate_disks(backend, inst, mapping, 'dest',
                                     transport.mock, bdi, progress=progress)

    travelling = ['disk', 'disk.config', 'disk.eph0', 'disk.local']
    assert copied == travelling
    for name in travelling:
        fx.disks[name].send_to.assert_called_once_with(
            transport.mock, 'dest',
            progress=getattr(mock.sentinel, f'progress_{name}'))
        assert mutations(fx, name) == ['send_to'], name
    assert sorted(c.args[0] for c in progress.call_args_list) == travelling
    # Swap is recreated on the destination; rescue disks stay.
    for name in ('disk.swap', 'disk.rescue', 'disk.eph1'):
        assert name not in fx.disks or mutations(fx, name) == [], name
    transport.mock.put.assert_called_once()
    assert transport.mock.fetch.call_count == 0
    (key, (basename, doc)), = transport.sent.items()
    assert key == ('dest', f'{inst.uuid}/disks.json')
    assert basename == 'disks.json'
    assert doc['schema_version'] == records_mod.SCHEMA_VERSION
    assert sorted(doc['disks']) == travelling
    for name in travelling:
        assert records_mod.DiskRecord.from_dict(doc['disks'][name]) == \
            recs[name]
    assert fx.created_disks == []


def test_migrate_disks_shared_storage_sends_only_records(make_fx, host,
                                                         monkeypatch):
    monkeypatch.setattr(qcow2.Qcow2, 'capabilities', dataclasses.replace(
        qcow2.Qcow2.capabilities, shared_storage=True))
    fx, backend, inst, bdi, mapping, recs = migrating_instance(make_fx, host)
    transport = RecordingTransport()

    copied = migration.migrate_disks(backend, inst, mapping, 'dest',
                                     transport.mock, bdi)

    assert copied == ['disk.config', 'disk.eph0']
    fx.disks['disk'].send_to.assert_not_called()
    fx.disks['disk.local'].send_to.assert_not_called()
    fx.disks['disk.config'].send_to.assert_called_once_with(
        transport.mock, 'dest', progress=None)
    (_basename, doc), = transport.sent.values()
    # The swap on shared storage is already on the destination: its record
    # travels too (finish_migration then recreates it at the new size).
    assert sorted(doc['disks']) == ['disk', 'disk.config', 'disk.eph0',
                                    'disk.local', 'disk.swap']
    fx.disks['disk.swap'].send_to.assert_not_called()


def test_migrate_disks_without_swap_in_flavor_sends_the_swap_record(make_fx,
                                                                    host):
    # Only what the instance describes as disposable stays behind.
    inst = make_instance()
    store = store_with(inst, record(inst, 'disk'))
    fx = make_fx(existing=['disk'])
    backend = imagebackend.Backend(conf=host, records=store)
    transport = RecordingTransport()
    assert migration.migrate_disks(
        backend, inst, instance_mod.disk_mapping(inst), 'dest',
        transport.mock) == ['disk']
    (_basename, doc), = transport.sent.values()
    assert list(doc['disks']) == ['disk']
    assert mutations(fx, 'disk') == ['send_to']


def test_migrate_disks_failing_send_sends_no_records(make_fx, host):
    fx, backend, inst, bdi, mapping, recs = migrating_instance(make_fx, host)
    fx.disks['disk.eph0'].send_to.side_effect = exception.TransportError(
        what='disk.eph0', host='dest', reason='boom')
    transport = RecordingTransport()
    with pytest.raises(exception.TransportError):
        migration.migrate_disks(backend, inst, mapping, 'dest',
                                transport.mock, bdi)
    transport.mock.put.assert_not_called()


# == cleanup_migration_source =================================================

def test_cleanup_migration_source_keeps_disks_on_shared_storage(
        make_fx, host, monkeypatch):
    """The source forgets disks on shared storage (the destination uses
    them now) and deletes the rest; rescue disks never travel, so they are
    deleted wherever they are. Asked of each disk's capabilities."""
    monkeypatch.setattr(qcow2.Qcow2, 'capabilities', dataclasses.replace(
        qcow2.Qcow2.capabilities, shared_storage=True))
    fx, backend, inst, _bdi, _mapping, _recs = migrating_instance(make_fx,
                                                                  host)
    deleted = flows.cleanup_migration_source(backend, inst)

    assert sorted(deleted) == ['disk.config', 'disk.eph0', 'disk.rescue']
    for name in ('disk', 'disk.local', 'disk.swap', 'disk.eph1'):
        assert not [c for c in call_names(fx, name)
                    if c in ('delete', 'remove_disk')], name
    for name in deleted:
        assert mutations(fx, name) == ['delete'], name
    # Nothing of the instance is left in the source's records.
    assert {r.name for r in backend.records.list(inst.uuid)} <= set(deleted)


# == the instance lock ========================================================

def test_flows_change_disks_only_under_the_instance_lock(make_fx, host):
    """Every change a flow makes runs with the instance's lock held (taken
    again by nested flows: it is re-entrant); none is left held after."""
    from imagebackend import locks
    fx, backend, inst, bdi, mapping, _recs = migrating_instance(make_fx,
                                                                host)
    seen = []

    def held(*_args, **_kwargs):
        seen.append(locks.held(host, inst.uuid))
    for name in ('disk', 'disk.config', 'disk.eph0', 'disk.local'):
        fx.disks[name].send_to.side_effect = held
    for name in fx.disks:
        fx.disks[name].delete.side_effect = held

    migration.migrate_disks(backend, inst, mapping, 'dest',
                            RecordingTransport().mock, bdi)
    with locks.instance_lock(host, inst.uuid):
        flows.destroy_disks(backend, inst)

    assert seen and all(seen), seen
    assert not locks.held(host, inst.uuid)


# == one batch of records per flow =============================================

def spy_batches(fx):
    """Each ``Backend.batch`` a flow opens (the fixture's, which writes no
    records): the disk names it declares and those created inside it.

    Put in place by the fixture itself, so it is undone before the
    fixture's own: undone later (by pytest's monkeypatch, which an autouse
    fixture makes before ``fx``), it would put the fixture's fake back
    after the fixture had restored the real one, for every later test."""
    opened = []
    fake = imagebackend.Backend.batch

    @contextlib.contextmanager
    def spy(backend_self, instance, disks=()):
        entry = {'declared': [d.name for d in disks], 'created': []}
        opened.append(entry)
        before = len(fx.created_disks)
        with fake(backend_self, instance, disks):
            yield
        entry['created'] = fx.created_disks[before:]

    fx.useFixture(fixtures.MonkeyPatch(
        'imagebackend.backend.Backend.batch', spy))
    return opened


@pytest.fixture
def batches(fx):
    return spy_batches(fx)


def test_spawn_makes_its_disks_in_one_batch(fx, host, batches):
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(ephemeral_gb=1, swap=64, config_drive=True)
    mapping = instance_mod.disk_mapping(inst)
    names = ['disk', 'disk.local', 'disk.swap', 'disk.config']

    assert flows.spawn(backend, CTX, inst, mapping) == names
    assert batches == [{'declared': names, 'created': names}]
    # Nothing missing: no batch (no record written at all).
    assert flows.spawn(backend, CTX, inst, mapping) == []
    assert len(batches) == 1


def test_spawn_declares_only_the_missing_disks(make_fx, host):
    fx = make_fx(existing=['disk'])
    opened = spy_batches(fx)
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(ephemeral_gb=1, swap=64)
    flows.spawn(backend, CTX, inst, instance_mod.disk_mapping(inst))
    assert opened == [{'declared': ['disk.local', 'disk.swap'],
                       'created': ['disk.local', 'disk.swap']}]


def test_rescue_and_pre_live_migration_make_their_disks_in_one_batch(
        fx, host, batches):
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(config_drive=True)
    flows.rescue(backend, CTX, inst)
    inst2, mapping = live_instance()
    flows.pre_live_migration(backend, CTX, inst2, mapping,
                             live_records(inst2).values(), source_host=SRC)
    live = ['disk', 'disk.config', 'disk.local', 'disk.swap']
    assert batches == [
        {'declared': ['disk.rescue', 'disk.config.rescue'],
         'created': ['disk.rescue', 'disk.config.rescue']},
        {'declared': live, 'created': live}]


def test_finish_migration_makes_missing_and_fresh_disks_in_one_batch(
        make_fx, host):
    fx = make_fx(existing=['disk', 'disk.swap'])
    opened = spy_batches(fx)
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(ephemeral_gb=1, swap=512)
    copied_disks(fx, {'disk': GiB, 'disk.swap': 256 * MiB})
    flows.finish_migration(backend, CTX, inst,
                           instance_mod.disk_mapping(inst), source_host=SRC)
    # The missing disk is declared; the swap made afresh replaces a record
    # of its own (written as alone), inside the same batch.
    assert opened == [{'declared': ['disk.local'],
                       'created': ['disk.local', 'disk.swap']}]
