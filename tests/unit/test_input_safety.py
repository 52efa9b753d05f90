"""Reserved names, disk sizes and the no-space error (issue 9, point 11)."""

from __future__ import annotations

import errno
import os

import pytest

from imagebackend import disks
from imagebackend import exception
from imagebackend import names
from imagebackend import nospace
from imagebackend import processes
from imagebackend import records

from driver import flows
from driver import instance as instance_mod
from tests.hosts import GiB, Instance

RESERVED = ['disks.json', 'locks', '_base', 'disk.part', 'disk.meta.json',
            'disk.converted.part']


# -- reserved names -------------------------------------------------------------

@pytest.mark.parametrize('name', RESERVED)
def test_reserved_names_are_no_disk_names(name):
    with pytest.raises(exception.InvalidDiskName) as e:
        names.check_disk_name(name)
    # ('_base' already fails the alphabet.)
    assert 'reserved' in str(e.value) or name == '_base'


@pytest.mark.parametrize('name', RESERVED)
def test_reserved_names_are_no_instance_uuids(name):
    with pytest.raises(exception.InvalidDiskName):
        names.check_instance_uuid(name)


@pytest.mark.parametrize('name', ['disks.json', 'locks'])
def test_backend_refuses_reserved_disk_names(backend, instance, name):
    with pytest.raises(exception.InvalidDiskName):
        backend.by_name(instance, name)
    with pytest.raises(exception.InvalidDiskName):
        backend.by_name(Instance(uuid=name), 'disk')
    assert os.listdir(backend.conf.instances_path) == []


@pytest.mark.parametrize('name', ['disks.json', 'locks'])
def test_records_refuse_reserved_names(name):
    with pytest.raises(exception.InvalidDiskName):
        records.DiskRecord(instance=name, name='disk', backend='flat',
                           format='raw', location='/x', source_type='none',
                           source_id=None)
    with pytest.raises(exception.InvalidDiskName):
        records.DiskRecord(instance='u-1', name=name, backend='flat',
                           format='raw', location='/x', source_type='none',
                           source_id=None)


def test_names_close_to_reserved_ones_are_fine():
    for name in ('disk', 'disks.json2', 'locks2', 'disk.partition',
                 'disk.eph0', 'disk.config.rescue'):
        assert names.check_disk_name(name) == name


# -- sizes ------------------------------------------------------------------------

@pytest.mark.parametrize('size', [-1, -GiB, 1.5, '1G', True])
def test_bad_sizes_are_invalid_input_at_construction(backend, instance, size):
    image = backend.by_name(instance, 'disk')
    with pytest.raises(exception.InvalidInput) as e:
        disks.DiskFromImage(image=image, size=size, image_id='img')
    assert not isinstance(e.value, exception.DiskTooSmall)
    with pytest.raises(exception.InvalidInput):
        disks.DiskFromFunc(image=image, size=size, func=lambda t: None,
                           cache_name='swap_1')


@pytest.mark.parametrize('size', [None, 0, 1, GiB])
def test_good_sizes_are_accepted(backend, instance, size):
    disk = disks.DiskFromImage(image=backend.by_name(instance, 'disk'),
                               size=size, image_id='img')
    assert disk.size == size


def test_spawn_with_a_negative_flavor_makes_nothing(backend):
    instance = instance_mod.Instance(image_ref='img',
                                     flavor=instance_mod.Flavor(root_gb=-1))
    with pytest.raises(exception.InvalidInput) as e:
        flows.spawn(backend, None, instance,
                    instance_mod.disk_mapping(instance))
    assert not isinstance(e.value, exception.DiskTooSmall)
    assert '-1073741824' in str(e.value)
    assert backend.records.list(instance.uuid) == []
    # Only the lock directory (the instance lock was taken): no disk, no
    # instance directory.
    assert set(os.listdir(backend.conf.instances_path)) <= {'locks'}


# -- no space ---------------------------------------------------------------------

def test_a_tool_reporting_no_space_is_a_typed_error():
    with pytest.raises(exception.NoSpace) as e:
        processes.execute('sh', '-c', 'echo "qemu-img: error while writing:'
                          ' No space left on device" >&2; exit 1')
    # Still a command failure for callers that handle those.
    assert isinstance(e.value, exception.ProcessError)
    assert e.value.exit_code == 1
    assert 'No space left on device' in e.value.stderr


def test_other_tool_failures_are_not_no_space():
    with pytest.raises(exception.ProcessError) as e:
        processes.execute('sh', '-c', 'echo "Permission denied" >&2; exit 1')
    assert not isinstance(e.value, exception.NoSpace)


@pytest.mark.parametrize('code', [errno.ENOSPC, errno.EDQUOT])
def test_full_or_over_quota_is_no_space(code):
    with pytest.raises(exception.NoSpace) as e:
        with nospace.mapped('disk x'):
            raise OSError(code, os.strerror(code))
    assert 'disk x' in str(e.value)
    assert isinstance(e.value.__cause__, OSError)
    assert not isinstance(e.value, OSError)


def test_other_os_errors_pass_through():
    with pytest.raises(PermissionError):
        with nospace.mapped('disk x'):
            raise PermissionError(errno.EACCES, 'denied')
