"""One Backend shared by native threads (nova-compute since 34.0.0).

Each race found between threads sharing one Backend has its test here,
next to the 16-thread spawn/resize/delete test below that finds them.
Nothing here asserts on time.
"""

from __future__ import annotations

import os
import sys
import threading

import pytest

from imagebackend import exception
from imagebackend import names

GUARD = 300          # seconds: a deadlock guard, never an assertion


# -- the races found, one by one -------------------------------------------------------

@pytest.fixture
def switch_often():
    """Threads switch every microsecond (Python's default is 5 ms), so a
    window of a few statements between two threads is hit in a test's
    time rather than once in a while in production."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def _template(target: str) -> None:
    with open(target, 'wb') as f:
        f.truncate(64 * 1024)


def test_check_while_an_entry_is_published(backend, switch_often):
    """ImageCache.check() outside the entry's lock, while another thread
    publishes the entry (sidecar, then data renamed in), says "not there"
    or gives the entry: never that its data has no sidecar."""
    cache = backend.image_cache
    count = 60
    wrong: list = []

    def publish():
        for i in range(count):
            cache.ensure_template(f'tpl_{i}', _template)

    def look():
        i = 0
        while i < count:
            try:
                if cache.check(f'tpl_{i}') is not None:
                    i += 1
            except exception.CorruptCacheEntry as e:
                wrong.append(str(e))
                i += 1

    threads = [threading.Thread(target=publish)] + [
        threading.Thread(target=look) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(GUARD)
        assert not t.is_alive()
    assert wrong == []
    # Data without a sidecar is still refused.
    os.unlink(cache.path('tpl_0') + names.META_SUFFIX)
    with pytest.raises(exception.CorruptCacheEntry, match='no sidecar'):
        cache.check('tpl_0')
