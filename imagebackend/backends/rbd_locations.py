"""Where an image already is in Ceph, and asking for it to be put there.

Rbd clones a root disk from an image's ``rbd://<fsid>/<pool>/<image>/<snap>``
location instead of downloading it. The locations come from image metadata
in one of two shapes, read the same way by :func:`image_view`:

* Nova's image metadata dict, as ``IMAGE_API.get(context, id,
  include_locations=True)`` returns it (``'id'``, ``'disk_format'``,
  ``'locations': [{'url': ..., 'metadata': {...}}, ...]``), passed by the
  caller of ``Rbd.clone``;
* the library's :class:`~imagebackend.sources.ImageMeta` from an image
  source's ``get_meta`` (``locations`` are URLs).

When no location is in this cluster, Glance multistore can copy the image
into this cluster's store (``[libvirt] images_rbd_glance_store_name``):
the image source is asked (:class:`~imagebackend.sources.StoreCopier`) and
its metadata re-read until the copy is done (:func:`wait_for_store_copy`).
Glance reports the copy in ``stores``, ``os_glance_importing_to_stores``
and ``os_glance_failed_import`` (comma-separated strings in Glance's API,
lists in Nova's tests; read at the top level, as Nova does, or among the
``properties``, where Nova's Glance client puts keys outside Glance's
schema).

When an image cannot be cloned, :class:`CloneNotPossible` says so: an
:class:`~imagebackend.exception.ImageUnacceptable`, Nova's signal for "fetch
the image instead" (its driver's ``clone_fallback_to_fetch`` catches it).

Images are addressed as ``rbd://<fsid>/<pool>/<image>/<snap>`` locations
(:func:`parse_location`) and ``rbd:<pool>/<name>`` paths
(:func:`parse_path`); ``BASE_SNAP`` is Glance's snapshot name, which pool
bases use too.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.parse
from typing import Any, Callable, Mapping

from imagebackend import exception
from imagebackend import sources

# Glance's image fields that follow a copy between stores.
STORES = 'stores'
IMPORTING = 'os_glance_importing_to_stores'
FAILED = 'os_glance_failed_import'

COPYING, DONE, FAILED_STATE = 'copying', 'done', 'failed'

# Glance's rbd store name for the protected snapshot of an image; pool bases
# use it too, so a base and a Glance image look alike.
BASE_SNAP = 'snap'


class CloneNotPossible(exception.ImageUnacceptable):
    """The image cannot be cloned in this cluster; nothing was created.

    Nova's fallback signal: a caller catching ImageUnacceptable downloads
    the image instead (``clone_fallback_to_fetch``)."""

    msg_fmt = "Image %(image_id)s cannot be cloned in this cluster: %(reason)s"


class StoreCopyFailed(CloneNotPossible):
    """The image source could not copy the image into this cluster's
    store (refused, or reported the copy failed)."""

    msg_fmt = ("Image %(image_id)s: copy to store %(store)s unsuccessful "
               "because: %(reason)s")


class StoreCopyTimeout(StoreCopyFailed):
    """The copy into this cluster's store was not done in time."""

    msg_fmt = ("Image %(image_id)s: copy to store %(store)s timed out "
               "after %(timeout)s s")


@dataclasses.dataclass(frozen=True)
class ImageView:
    """What Rbd needs from an image's metadata, whatever its shape."""

    id: str
    disk_format: str | None
    urls: tuple[str, ...]            # every location's URL, in order
    stores: tuple[str, ...] = ()     # Glance stores that hold the image
    importing: tuple[str, ...] = ()  # ... it is being copied to
    failed: tuple[str, ...] = ()     # ... a copy to has failed

    @property
    def rbd_urls(self) -> tuple[str, ...]:
        return tuple(u for u in self.urls if u.startswith('rbd://'))


def _store_names(value: Any) -> tuple[str, ...]:
    """Glance's store list: a comma-separated string, or a list."""
    if not value:
        return ()
    if isinstance(value, str):
        value = value.split(',')
    return tuple(s.strip() for s in value if isinstance(s, str) and s.strip())


def parse_location(url: str) -> tuple[str, str, str, str]:
    """``rbd://<fsid>/<pool>/<image>/<snap>`` -> (fsid, pool, image, snap)."""
    prefix = 'rbd://'
    if not isinstance(url, str) or not url.startswith(prefix):
        raise exception.InvalidInput(reason=f'{url!r} is not an rbd:// URL')
    # Glance quotes each piece (glance_store's rbd driver); Nova unquotes.
    pieces = [urllib.parse.unquote(p) for p in url[len(prefix):].split('/')]
    if len(pieces) != 4 or not all(pieces):
        raise exception.InvalidInput(
            reason=f'{url!r} is not rbd://<fsid>/<pool>/<image>/<snap>')
    return tuple(pieces)  # type: ignore[return-value]


def parse_path(path: str) -> tuple[str, str]:
    """A libvirt/qemu RBD path -> (pool, image name).

    Accepts ``rbd:<pool>/<name>[:opt=..]...`` (this backend's ``path``) and
    ``<pool>/<name>`` (the ``name`` of a network ``<source>``).
    """
    if not isinstance(path, str):
        raise exception.InvalidInput(reason=f'{path!r} is not an RBD path')
    spec = path[4:] if path.startswith('rbd:') else path
    spec = spec.split(':', 1)[0]
    pool, sep, name = spec.partition('/')
    if not sep or not pool or not name or '/' in name or '@' in name:
        raise exception.InvalidInput(
            reason=f'{path!r} is not an RBD path (rbd:<pool>/<name>)')
    return pool, name


def location_url(location: Any) -> str | None:
    if isinstance(location, str):
        return location
    if isinstance(location, Mapping) and isinstance(location.get('url'),
                                                    str):
        return location['url']
    return None


def raw_locations(meta: sources.ImageMeta | Mapping[str, Any]) -> list:
    """The locations of ``meta`` as it gives them (Nova: dicts with a
    ``url``; ImageMeta: URLs), for Nova's ``is_cloneable(location, meta)``.
    """
    if isinstance(meta, sources.ImageMeta):
        return list(meta.locations)
    if isinstance(meta, Mapping):
        return list(meta.get('locations') or ())
    return []


def image_view(meta: sources.ImageMeta | Mapping[str, Any],
               image_id: str | None = None) -> ImageView:
    """Read ``meta`` (Nova's dict or an ImageMeta) into an ImageView;
    ``image_id`` when the metadata carries none."""
    if isinstance(meta, sources.ImageMeta):
        props: Mapping[str, Any] = meta.properties or {}
        locations: Any = meta.locations
        ident, disk_format = meta.id, meta.disk_format

        def field(key):
            return props.get(key)
    elif isinstance(meta, Mapping):
        props = meta.get('properties') or {}
        locations = meta.get('locations') or ()
        ident, disk_format = meta.get('id'), meta.get('disk_format')

        def field(key):
            value = meta.get(key)
            return props.get(key) if value is None else value
    else:
        raise exception.InvalidInput(
            reason=f'image metadata must be a dict or ImageMeta, not '
                   f'{type(meta).__name__}')
    ident = ident or image_id
    if not ident:
        raise exception.InvalidInput(reason='image metadata without an id')
    urls = tuple(u for u in map(location_url, locations) if u)
    return ImageView(id=str(ident), disk_format=disk_format, urls=urls,
                     stores=_store_names(field(STORES)),
                     importing=_store_names(field(IMPORTING)),
                     failed=_store_names(field(FAILED)))


def copy_state(view: ImageView, store: str,
               cloneable: Callable[[ImageView], bool]) -> str:
    """Where a copy of the image into ``store`` is, by its metadata.

    Glance's word first (failed; still importing; listed in ``stores``), as
    Nova reads it; a source that reports no stores is done once it lists a
    location ``cloneable`` says this cluster can clone."""
    if store in view.failed:
        return FAILED_STATE
    if store in view.importing:
        return COPYING
    if store in view.stores or cloneable(view):
        return DONE
    return COPYING


def wait_for_store_copy(read: Callable[[], ImageView], store: str,
                        cloneable: Callable[[ImageView], bool],
                        interval: float, timeout: float,
                        sleep: Callable[[float], None] = time.sleep,
                        clock: Callable[[], float] = time.monotonic
                        ) -> ImageView:
    """Re-read the image's metadata until its copy into ``store`` is done;
    return the last view read.

    Nova's loop (oslo's FixedIntervalWithTimeoutLoopingCall): read at once,
    then every ``interval`` s (less the read's own time); after a read that
    is not done, more than ``timeout`` s since the start is a timeout
    (``timeout`` <= 0: no limit). StoreCopyFailed if the source reports the
    copy failed, StoreCopyTimeout on timeout."""
    start = clock()
    while True:
        began = clock()
        view = read()
        state = copy_state(view, store, cloneable)
        if state == DONE:
            return view
        if state == FAILED_STATE:
            raise StoreCopyFailed(image_id=view.id, store=store,
                                  reason='failed import')
        now = clock()
        if timeout > 0 and now - start > timeout:
            raise StoreCopyTimeout(image_id=view.id, store=store,
                                   timeout=timeout)
        sleep(max(0.0, interval - (now - began)))
