"""Rbd.clone from the caller's image metadata, Nova's fallback signal and
the Glance multistore copy, on the project's real Ceph.

Nova's driver calls ``backend.clone(context, image_id)`` inside its
``clone_fallback_to_fetch`` and downloads the image when that raises
ImageUnacceptable; the Nova face passes the image metadata Nova read from
Glance (``IMAGE_API.get(..., include_locations=True)``). Here the Ceph side
is real (images in the 'images' pool, as Glance's rbd store leaves them);
the Glance side is an in-process image source that "copies" an image into
the cluster when asked.
"""

from __future__ import annotations

import pytest

import imagebackend
from imagebackend import exception
from imagebackend import names
from imagebackend import processes
from imagebackend import shim
from imagebackend import sources
from imagebackend.backends import rbd as rbd_mod

from tests.functional.conftest import Instance, MiB
from tests.functional.test_rbd import (  # noqa: F401 (ceph is a fixture)
    SNAP, ceph, disk_name_in_pool, glance_image, padded_sha256, rbd_ls,
    rbd_parent, rbd_sha256, use_rbd)

OTHER_FSID = '00000000-0000-0000-0000-000000000000'
STORE = 'ceph-here'


def url_of(ceph, name, fsid=None, snap=SNAP):
    return f'rbd://{fsid or ceph.fsid}/{ceph.images_pool}/{name}/{snap}'


def nova_meta(image_id, urls, disk_format='raw', **extra):
    """Image metadata as Nova's IMAGE_API.get(include_locations=True)."""
    return {'id': image_id, 'disk_format': disk_format,
            'locations': [{'url': u, 'metadata': {}} for u in urls],
            **extra}


def pools_empty(ceph):
    return rbd_ls(ceph) == [] and rbd_ls(ceph, ceph.images_pool) == []


# -- clone from the caller's locations -------------------------------------

def test_clone_from_callers_locations(host, ceph):
    use_rbd(host, ceph)
    data = glance_image(ceph, 'glance-img')
    # The library's own image source does not know the image: only the
    # caller's metadata can lead to it. The first location is of another
    # cluster and is skipped, as Nova's is_cloneable does.
    backend = imagebackend.Backend(conf=host)
    meta = nova_meta('gimg', ['http://glance/v2/images/gimg/file',
                              url_of(ceph, 'glance-img', OTHER_FSID),
                              url_of(ceph, 'glance-img')])
    instance = Instance()
    disk = backend.by_name(instance, 'disk')
    with processes.recording() as cmds:
        disk.clone(None, 'gimg', image_meta=meta)
    assert cmds == []
    name = disk_name_in_pool(instance, 'disk')
    assert rbd_ls(ceph) == [name]
    assert rbd_parent(ceph, name) == (ceph.images_pool, 'glance-img', SNAP)
    assert rbd_sha256(ceph, name) == padded_sha256(data, 64 * MiB)
    assert backend.image_cache.entries() == []
    # A second clone onto the same disk: DiskExists, the disk is kept.
    with pytest.raises(exception.DiskExists):
        disk.clone(None, 'gimg', image_meta=meta)
    assert rbd_parent(ceph, name) == (ceph.images_pool, 'glance-img', SNAP)


def test_clone_refused_with_the_fallback_signal(host, ceph):
    use_rbd(host, ceph)
    glance_image(ceph, 'glance-img', size=8 * MiB)
    disk = imagebackend.Backend(conf=host).by_name(Instance(), 'disk')
    cases = {   # case: (locations, disk_format, why)
        'other-cluster': ([url_of(ceph, 'glance-img', OTHER_FSID)], 'raw',
                          'another cluster'),
        'not-raw': ([url_of(ceph, 'glance-img')], 'qcow2', 'not raw'),
        'no-snapshot': ([url_of(ceph, 'glance-img', snap='gone')], 'raw',
                        'no such image or snapshot'),
        'no-location': (['http://glance/v2/images/gimg/file'], 'raw',
                        'no rbd:// location'),
    }
    for case, (urls, disk_format, why) in cases.items():
        meta = nova_meta('gimg', urls, disk_format=disk_format)
        with pytest.raises(rbd_mod.CloneNotPossible) as e:
            disk.clone(None, 'gimg', image_meta=meta)
        # What Nova's clone_fallback_to_fetch catches.
        assert isinstance(e.value, exception.ImageUnacceptable), case
        assert 'gimg' in str(e.value) and why in str(e.value), case
        assert rbd_ls(ceph) == [], case          # nothing made
        assert not disk.exists()


def test_nova_clone_fallback_to_fetch_through_cache(host, ceph, make_image):
    """Nova's driver: cache() with a fetch_func that clones and, on
    ImageUnacceptable, downloads. Cloneable: a clone, nothing fetched.
    Not in this cluster: the download, imported as the disk."""
    use_rbd(host, ceph)
    glance_image(ceph, 'glance-img')
    make_image('img', 'raw', 64 * MiB)
    backend = imagebackend.Backend(conf=host)
    fetched = []

    def fallback_fetch(disk, meta):
        def clone_fallback_to_fetch(context, target, image_id):
            try:
                disk.clone(context, image_id, image_meta=meta)
            except exception.ImageUnacceptable:
                fetched.append(image_id)
                shim._image_fetcher(disk, None)(target=target,
                                                context=context,
                                                image_id=image_id)
        return clone_fallback_to_fetch

    cloned, downloaded = Instance(), Instance()
    for inst, url in ((cloned, url_of(ceph, 'glance-img')),
                      (downloaded, url_of(ceph, 'glance-img', OTHER_FSID))):
        disk = backend.by_name(inst, 'disk')
        disk.cache(fallback_fetch(disk, nova_meta('img', [url])),
                   names.image_cache_name('img'), 96 * MiB, context=None,
                   image_id='img')
    assert fetched == ['img']
    one, two = (disk_name_in_pool(i, 'disk') for i in (cloned, downloaded))
    assert rbd_parent(ceph, one) == (ceph.images_pool, 'glance-img', SNAP)
    assert rbd_parent(ceph, two) is None         # imported: a full copy
    prov = [backend.records.get(i.uuid, 'disk').provenance
            for i in (cloned, downloaded)]
    assert [p['how'] for p in prov] == ['clone-from-location', 'import']
    assert backend.records.get(cloned.uuid, 'disk').virtual_size == 96 * MiB


# -- the Glance multistore copy ---------------------------------------------

class MultistoreSource(sources.DirectoryImageSource):
    """Glance with an rbd store in this cluster and another store: asked to
    copy an image into STORE, it writes it into the 'images' pool (real
    Ceph) and reports the copy in progress for ``polls_until_done`` reads.
    ``outcome`` 'failed' reports a failed import, 'never' never finishes,
    'refused' refuses the copy outright."""

    def __init__(self, directory, ceph, outcome='done', polls_until_done=2,
                 report='location'):
        super().__init__(directory)
        self.ceph = ceph
        self.outcome = outcome
        self.polls_left = polls_until_done
        self.report = report
        self.copies = []
        self.reads = 0
        self.copied = False

    def get_meta(self, context, image_id):
        self.reads += 1
        locations = ('http://glance/other-store',)
        props = {'stores': 'other'}
        if self.copies:
            if self.outcome == 'failed':
                props['os_glance_failed_import'] = STORE
            elif self.outcome == 'never' or self.polls_left > 0:
                self.polls_left -= 1
                props['os_glance_importing_to_stores'] = STORE
            else:
                if not self.copied:
                    glance_image(self.ceph, 'copied-img', pattern=b'\x5a')
                    self.copied = True
                locations += (url_of(self.ceph, 'copied-img'),)
                if self.report == 'stores':
                    props['stores'] = f'other,{STORE}'
        return sources.ImageMeta(id=image_id, disk_format='raw',
                                 locations=locations, properties=props)

    def copy_to_store(self, context, image_id, store):
        self.copies.append((image_id, store))
        if self.outcome == 'refused':
            raise exception.ImageUnacceptable(image_id=image_id,
                                              reason='image not active')


def multistore(host, ceph, **kwargs):
    use_rbd(host, ceph, images_rbd_glance_store_name=STORE,
            images_rbd_glance_copy_poll_interval=0)
    source = MultistoreSource(host.imagebackend.images_dir, ceph, **kwargs)
    return imagebackend.Backend(conf=host, source=source), source


@pytest.mark.parametrize('report', ['location', 'stores'])
def test_copy_to_store_then_clone(host, ceph, report):
    backend, source = multistore(host, ceph, report=report)
    instance = Instance()
    disk = backend.by_name(instance, 'disk')
    meta = nova_meta('gimg', ['http://glance/other-store'])
    disk.clone(None, 'gimg', image_meta=meta)
    assert source.copies == [('gimg', STORE)]
    # Read while the copy was in progress (2), once done, and again for
    # the second clone attempt.
    assert source.reads == 4
    name = disk_name_in_pool(instance, 'disk')
    assert rbd_parent(ceph, name) == (ceph.images_pool, 'copied-img', SNAP)
    assert rbd_sha256(ceph, name) == padded_sha256(b'\x5a' * MiB, 64 * MiB)


@pytest.mark.parametrize('case', ['failed', 'refused', 'not-configured',
                                  'no-copy', 'no-copier'])
def test_copy_to_store_refusals(host, ceph, case):
    backend, source = multistore(
        host, ceph, outcome=case if case in ('failed', 'refused') else 'done',
        polls_until_done=0)
    if case == 'not-configured':
        host.set_override('images_rbd_glance_store_name', '',
                          group='libvirt')
    elif case == 'no-copier':
        backend = imagebackend.Backend(conf=host)   # a directory source
    disk = backend.by_name(Instance(), 'disk')
    meta = nova_meta('gimg', ['http://glance/other-store'])
    with pytest.raises(rbd_mod.CloneNotPossible) as e:
        disk.clone(None, 'gimg', copy_to_store=case != 'no-copy',
                   image_meta=meta)
    assert isinstance(e.value, exception.ImageUnacceptable)
    if case in ('failed', 'refused', 'no-copier'):
        assert isinstance(e.value, rbd_mod.StoreCopyFailed)
        assert 'unsuccessful because' in str(e.value)
    assert source.copies == ([('gimg', STORE)]
                             if case in ('failed', 'refused') else [])
    assert rbd_ls(ceph) == []
    assert rbd_ls(ceph, ceph.images_pool) == []


def test_copy_to_store_times_out(host, ceph):
    backend, source = multistore(host, ceph, outcome='never')
    host.set_override('images_rbd_glance_copy_poll_interval', 1,
                      group='libvirt')
    host.set_override('images_rbd_glance_copy_timeout', 1, group='libvirt')
    disk = backend.by_name(Instance(), 'disk')
    with pytest.raises(rbd_mod.StoreCopyTimeout) as e:
        disk.clone(None, 'gimg',
                   image_meta=nova_meta('gimg', ['http://glance/x']))
    assert isinstance(e.value, rbd_mod.CloneNotPossible)
    assert isinstance(e.value, exception.ImageUnacceptable)
    assert 'timed out' in str(e.value)
    assert source.copies == [('gimg', STORE)] and source.reads == 2
    assert rbd_ls(ceph) == []
