"""Rbd's cluster connection (imagebackend/backends/ceph_connection.py) on
the real Ceph of tests/functional/ceph_env.py: one connection per Backend,
reused by its disks and threads, made again after a break, never shared
with a forked child, closed by Backend.close() or when its Backend is
dropped."""

from __future__ import annotations

import concurrent.futures
import gc
import os

import pytest
import rados

import imagebackend
from imagebackend.backends import ceph_connection
from tests.functional.conftest import MiB, Instance, make_ephemeral, make_swap
from tests.functional.test_rbd import (  # noqa: F401 (the ceph fixture)
    ceph, rbd_backend, rbd_ls, rbd_size)


@pytest.fixture
def connects(monkeypatch):
    """Every connection made, by process (the real one is made)."""
    made: list[int] = []
    real = ceph_connection._open

    def spy(*args):
        made.append(os.getpid())
        return real(*args)
    monkeypatch.setattr(ceph_connection, '_open', spy)
    return made


@pytest.fixture
def clients(monkeypatch):
    """Every librados client made (the real ones)."""
    made: list = []
    real = ceph_connection._open

    def spy(*args):
        conn = real(*args)
        made.append(conn.client)
        return conn
    monkeypatch.setattr(ceph_connection, '_open', spy)
    return made


def spawn3(backend, instance):
    """Root from an image, ephemeral and swap: three disks."""
    backend.by_name(instance, 'disk').create_from_image(None, 'img',
                                                        128 * MiB)
    backend.by_name(instance, 'disk.local').create_from_func(
        None, make_ephemeral(size=32 * MiB), 'ephemeral_32M', 32 * MiB)
    backend.by_name(instance, 'disk.swap').create_from_func(
        None, make_swap(16 * MiB), 'swap_16M', 16 * MiB)


def test_a_three_disk_spawn_connects_once(rbd_backend, ceph, make_image,
                                          connects):
    make_image('img', 'raw', 64 * MiB)
    first, second = Instance(), Instance()
    spawn3(rbd_backend, first)
    spawn3(rbd_backend, second)
    for inst in (first, second):
        for name in ('disk', 'disk.local', 'disk.swap'):
            assert rbd_backend.by_name(inst, name).exists()
    assert rbd_size(ceph, f'{first.uuid}_disk') == 128 * MiB
    # Six disks, their pool bases, their records' existence checks: one.
    assert connects == [os.getpid()]
    # Another Backend has its own.
    other = imagebackend.Backend(conf=rbd_backend.conf)
    assert other.by_name(first, 'disk').exists()
    assert len(connects) == 2
    other.close()


def test_a_dropped_backend_shuts_its_client_down(rbd_backend, ceph,
                                                 clients):
    # A caller that makes a Backend per request and never closes it (the
    # Nova face makes one per disk) must not leave a librados client
    # behind each time: Rados has no finalizer, so each would keep its
    # threads and its sessions with the mon and OSDs for the process's life.
    instance = Instance()
    for _ in range(3):
        backend = imagebackend.Backend(conf=rbd_backend.conf)
        assert not backend.by_name(instance, 'disk').exists()
        del backend
        gc.collect()
    assert len(clients) == 3
    assert [c.state for c in clients] == ['shutdown'] * 3


def test_close_then_reconnect_on_demand(rbd_backend, ceph, make_image,
                                        connects):
    make_image('img', 'raw', 64 * MiB)
    disk = rbd_backend.by_name(Instance(), 'disk')
    assert not disk.exists()
    [cluster] = [v for v in rbd_backend._shared.values()
                 if isinstance(v, ceph_connection.Cluster)]
    with cluster.session() as conn:
        client = conn.client
    rbd_backend.close()
    assert client.state == 'shutdown'
    disk.create_from_image(None, 'img')   # connects again
    assert len(connects) == 2
    # A connection found shut down is not lent again: a new one is made.
    with cluster.session() as conn:
        conn.client.shutdown()
    assert disk.exists()
    assert len(connects) == 3
    # One that breaks under a session is dropped when the session fails.
    with pytest.raises(rados.RadosStateError):
        with cluster.session() as conn:
            conn.client.shutdown()
            conn.client.get_fsid()
    assert disk.exists()
    assert len(connects) == 4
    rbd_backend.close()


def test_threads_share_one_connection(rbd_backend, ceph, make_image,
                                      connects):
    make_image('img', 'raw', 64 * MiB)
    instances = [Instance() for _ in range(6)]

    def make(inst):
        disk = rbd_backend.by_name(inst, 'disk')
        disk.create_from_image(None, 'img', 96 * MiB)
        return disk.exists()

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert list(pool.map(make, instances)) == [True] * 6
    assert connects == [os.getpid()]
    assert sorted(n for n in rbd_ls(ceph) if n.endswith('_disk')) == sorted(
        f'{i.uuid}_disk' for i in instances)


def test_a_forked_child_connects_its_own(rbd_backend, ceph, make_image,
                                         connects):
    make_image('img', 'raw', 64 * MiB)
    parent_disk = rbd_backend.by_name(Instance(), 'disk')
    parent_disk.create_from_image(None, 'img')
    child_instance = Instance()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: its own connection, the parent's untouched
        code = 1
        try:
            os.close(read)
            disk = rbd_backend.by_name(child_instance, 'disk')
            disk.create_from_image(None, 'img')
            ok = disk.exists() and connects[-1] == os.getpid()
            os.write(write, b'ok' if ok else b'wrong')
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, 'rb') as f:
        said = f.read()
    assert os.waitpid(pid, 0)[1] == 0
    assert said == b'ok'
    # The parent's connection still works, and is still the only one here.
    assert parent_disk.exists()
    assert rbd_backend.by_name(child_instance, 'disk').exists()
    assert [p for p in connects if p == os.getpid()] == [os.getpid()]
