"""Lvm: a volume made bigger than its image gets the image's bare ext
filesystem grown (Nova's create_lvm_image ran resize2fs); a partitioned
image is written as it is. Real lvm2 on loop devices, real e2fsck and
resize2fs (tests/functional/test_lvm.py describes the environment).
"""

from __future__ import annotations

import os

import pytest

from tests.functional.conftest import MiB, Instance
from tests.functional.test_grow_filesystem import (ext4_image, ext_size,
                                                   fs_commands,
                                                   partitioned_image,
                                                   prefix_sha)
from tests.functional.test_lvm import (backend, create, lv_sizes,  # noqa: F401
                                       lvm, lvm_env, lvm_host)


def _image(lvm_host, maker) -> str:
    return maker(os.path.join(lvm_host.imagebackend.images_dir, 'img.raw'))


@pytest.mark.parametrize('via', ['native', 'shim'])
def test_bigger_volume_grows_the_filesystem(backend, lvm, lvm_host, recorded,
                                            via):
    _image(lvm_host, ext4_image)
    instance = Instance()
    disk = backend.by_name(instance, 'disk')
    create(disk, via, 'image', size=128 * MiB)
    assert lv_sizes(lvm, lvm.vg_main) == {disk.lv: 128 * MiB}
    assert ext_size(disk.path) == 128 * MiB
    assert fs_commands(recorded) == ['e2fsck', 'resize2fs']
    record = backend.records.get(instance.uuid, 'disk')
    assert (record.state, record.virtual_size) == ('created', 128 * MiB)


def test_same_size_volume_runs_no_tool(backend, lvm, lvm_host, recorded):
    _image(lvm_host, ext4_image)
    disk = backend.by_name(Instance(), 'disk')
    create(disk, 'native', 'image', size=64 * MiB)
    assert ext_size(disk.path) == 64 * MiB
    assert fs_commands(recorded) == []


def test_partitioned_image_is_not_touched(backend, lvm, lvm_host, recorded):
    src = _image(lvm_host, partitioned_image)
    disk = backend.by_name(Instance(), 'disk')
    create(disk, 'native', 'image', size=128 * MiB)
    assert fs_commands(recorded) == []
    assert prefix_sha(disk.path, 64 * MiB) == prefix_sha(src, 64 * MiB)
