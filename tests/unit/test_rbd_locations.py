"""Image metadata read for Rbd clones, and the Glance copy wait loop.

Pure logic, no cluster: the metadata shapes (Nova's dict, ImageMeta) and
the loop's decisions, with a fake clock (the real Ceph side is in
tests/functional/test_rbd_clone.py).
"""

import pytest

from imagebackend import exception
from imagebackend import sources
from imagebackend.backends import rbd as rbd_mod
from imagebackend.backends import rbd_locations as loc

URL = 'rbd://fsid/images/img/snap'


def test_errors_are_nova_fallback_signals():
    for cls in (loc.CloneNotPossible, loc.StoreCopyFailed,
                loc.StoreCopyTimeout):
        assert issubclass(cls, exception.ImageUnacceptable)
        assert issubclass(cls, loc.CloneNotPossible)
    assert rbd_mod.CloneNotPossible is loc.CloneNotPossible
    assert 'timed out' in str(loc.StoreCopyTimeout(image_id='i', store='s',
                                                   timeout=3))
    assert 'unsuccessful because: x' in str(
        loc.StoreCopyFailed(image_id='i', store='s', reason='x'))


def test_view_of_novas_image_metadata():
    meta = {'id': 'img', 'disk_format': 'raw',
            'locations': [{'url': 'http://g/file', 'metadata': {}},
                          {'url': URL, 'metadata': {'store': 'ceph'}},
                          {'metadata': {}}, 'rbd://plain/string/x/y'],
            'stores': 'other, ceph',
            'properties': {'os_glance_importing_to_stores': 'ceph',
                           'os_glance_failed_import': ''}}
    view = loc.image_view(meta)
    assert view.id == 'img' and view.disk_format == 'raw'
    assert view.urls == ('http://g/file', URL, 'rbd://plain/string/x/y')
    assert view.rbd_urls == (URL, 'rbd://plain/string/x/y')
    assert (view.stores, view.importing, view.failed) == (
        ('other', 'ceph'), ('ceph',), ())
    # Nova's tests give lists, at the top level; an id may come apart.
    view = loc.image_view({'stores': ['a'], 'locations': ['fake'],
                           'os_glance_failed_import': ['b']}, 'other-id')
    assert (view.id, view.disk_format, view.urls, view.stores,
            view.failed) == ('other-id', None, ('fake',), ('a',), ('b',))


def test_view_of_image_meta():
    meta = sources.ImageMeta(id='img', disk_format='iso', locations=(URL,),
                             properties={'stores': 'x,y'})
    view = loc.image_view(meta)
    assert (view.id, view.disk_format, view.rbd_urls, view.stores) == (
        'img', 'iso', (URL,), ('x', 'y'))


@pytest.mark.parametrize('meta', [None, 'img', {'disk_format': 'raw'}])
def test_bad_metadata_is_refused(meta):
    with pytest.raises(exception.InvalidInput):
        loc.image_view(meta)


@pytest.mark.parametrize(('fields', 'cloneable', 'state'), [
    ({}, False, loc.COPYING),
    ({}, True, loc.DONE),
    ({'stores': ['s']}, False, loc.DONE),
    ({'stores': ['s'], 'os_glance_importing_to_stores': ['s']}, True,
     loc.COPYING),
    ({'stores': ['s'], 'os_glance_failed_import': ['s']}, True,
     loc.FAILED_STATE),
    ({'stores': ['other']}, False, loc.COPYING),
])
def test_copy_state(fields, cloneable, state):
    view = loc.image_view({'id': 'i', **fields})
    assert loc.copy_state(view, 's', lambda v: cloneable) == state


class FakeTime:
    """A clock that moves only when slept on (or read with a cost)."""

    def __init__(self, read_cost=0.0):
        self.now = 100.0
        self.sleeps = []
        self.read_cost = read_cost

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def reader(states, t):
    """A read() returning views of ``states`` in turn ('c'/'d'/'f')."""
    fields = {'c': {'os_glance_importing_to_stores': ['s']},
              'd': {'stores': ['s']},
              'f': {'os_glance_failed_import': ['s']}}
    reads = []

    def read():
        t.now += t.read_cost
        reads.append(states[len(reads)])
        return loc.image_view({'id': 'i', **fields[reads[-1]]})
    return read, reads


def test_wait_reads_at_once_then_every_interval_less_the_read():
    t = FakeTime(read_cost=1.0)
    read, reads = reader('ccd', t)
    view = loc.wait_for_store_copy(read, 's', lambda v: False, interval=5,
                                   timeout=600, sleep=t.sleep,
                                   clock=t.clock)
    assert view.stores == ('s',) and reads == list('ccd')
    assert t.sleeps == [4.0, 4.0]


def test_wait_fails_when_the_source_says_so():
    t = FakeTime()
    read, reads = reader('cf', t)
    with pytest.raises(loc.StoreCopyFailed) as e:
        loc.wait_for_store_copy(read, 's', lambda v: False, interval=1,
                                timeout=600, sleep=t.sleep, clock=t.clock)
    assert 'failed import' in str(e.value) and reads == ['c', 'f']


def test_wait_times_out_after_a_read_past_the_timeout():
    t = FakeTime()
    read, reads = reader('c' * 10, t)
    with pytest.raises(loc.StoreCopyTimeout) as e:
        loc.wait_for_store_copy(read, 's', lambda v: False, interval=2,
                                timeout=5, sleep=t.sleep, clock=t.clock)
    # Reads at 0, 2, 4 and 6 s; 6 > 5: timed out (oslo's rule).
    assert len(reads) == 4 and 'timed out after 5 s' in str(e.value)


def test_wait_without_a_timeout_waits_until_done():
    t = FakeTime()
    read, reads = reader('c' * 50 + 'd', t)
    loc.wait_for_store_copy(read, 's', lambda v: False, interval=60,
                            timeout=0, sleep=t.sleep, clock=t.clock)
    assert len(reads) == 51


def test_wait_done_when_a_cloneable_location_appears():
    t = FakeTime()
    seen = []
    views = iter([loc.image_view({'id': 'i'}),
                  loc.image_view({'id': 'i', 'locations': [URL]})])

    def cloneable(view):
        seen.append(view.rbd_urls)
        return bool(view.rbd_urls)

    view = loc.wait_for_store_copy(lambda: next(views), 's', cloneable,
                                   interval=0, timeout=10, sleep=t.sleep,
                                   clock=t.clock)
    assert view.rbd_urls == (URL,) and seen == [(), (URL,)]
