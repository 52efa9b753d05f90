"""Nova's ``cache()`` with a fetch or template function that makes nothing.

Nova's driver hands ``cache()`` its own function (Glance's download, or
``_create_ephemeral`` / ``_create_swap``); one that returns without
writing its target (a broken plugin, a download that "succeeded" into the
wrong place) must end in the library's typed error, naming the function
and the path, with nothing left behind: no disk, no record, no base.
The file backends here, Lvm and Rbd on their real storage in test_lvm.py
and test_rbd.py.
"""

from __future__ import annotations

import os

import pytest

from imagebackend import exception
from imagebackend import names


def makes_nothing(target, *args, **kwargs):
    """A fetch/template function that returns without writing ``target``."""


def assert_nothing_left(backend, instance, disk, name):
    assert not os.path.lexists(disk.path)
    assert backend.records.get(instance.uuid, 'disk') is None
    base = backend.image_cache.path(name)
    assert not os.path.exists(base)
    assert not os.path.exists(base + names.META_SUFFIX)


@pytest.mark.parametrize('image_type', ('flat', 'qcow2', 'ploop'))
def test_fetch_that_makes_no_base_is_a_typed_error(
        backend, instance, image_type):
    name = names.image_cache_name('img')
    disk = backend.by_name(instance, 'disk', image_type)
    with pytest.raises(exception.NothingMade) as e:
        disk.cache(fetch_func=makes_nothing, context=None, filename=name,
                   image_id='img', size=64 * 2**20)
    assert backend.image_cache.path(name) in str(e.value)
    assert 'makes_nothing' in str(e.value)
    assert_nothing_left(backend, instance, disk, name)


@pytest.mark.parametrize('image_type', ('flat', 'qcow2', 'ploop'))
def test_template_that_makes_no_disk_is_a_typed_error(
        backend, instance, image_type):
    name = 'ephemeral_1_40d1d2c'
    disk = backend.by_name(instance, 'disk', image_type)
    with pytest.raises(exception.NothingMade) as e:
        disk.cache(fetch_func=makes_nothing, filename=name,
                   size=64 * 2**20, ephemeral_size=1)
    assert 'makes_nothing' in str(e.value)
    assert_nothing_left(backend, instance, disk, name)
