"""Rbd's clone of an image from its locations, and Glance's store copy.

Nova's ``clone(context, image_id, copy_to_store=True, image_meta=None)``
(its driver's ``clone_fallback_to_fetch``) clones from the locations in the
caller's image metadata (Nova's ``IMAGE_API.get(..., include_locations=
True)`` dict; without it the image source's) with the rules of 2. in
:mod:`.rbd_create`;
when it cannot, it raises ``CloneNotPossible``, an ImageUnacceptable: the
caller downloads the image instead. With ``[libvirt]
images_rbd_glance_store_name`` set it first asks the image source (a
:class:`~imagebackend.sources.StoreCopier`) to copy the image into this
cluster's Glance store, waits for it (``copy_to_store``) and tries once
more. Metadata shapes and the wait are in :mod:`.rbd_locations`.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from imagebackend import exception
from imagebackend import formats
from imagebackend import sources
from imagebackend.backends import rbd_driver
from imagebackend.backends import rbd_locations
from imagebackend.backends.rbd_locations import (
    CloneNotPossible, StoreCopyFailed, parse_location)

# The optional bindings (None where not installed), imported once.
from imagebackend.backends.ceph_connection import librbd, rados

LOG = logging.getLogger(__name__)


class RbdClone:
    """Nova's ``clone`` and ``copy_to_store`` hooks of an Rbd disk (a part
    of :class:`~imagebackend.backends.rbd.Rbd`)."""

    # How copy_to_store waits for the image source (read, store, cloneable,
    # interval, timeout): replaceable, e.g. by a caller whose own loop
    # (Nova's oslo loopingcall) its tests drive.
    wait_for_store_copy = staticmethod(rbd_locations.wait_for_store_copy)

    def clone(self, context: Any, image_id_or_uri: str,
              copy_to_store: bool = True,
              image_meta: Mapping[str, Any] | sources.ImageMeta | None = None
              ) -> None:
        """Create this disk as a copy-on-write clone of the image where it
        already is in this cluster. Nova's hook (its driver's
        ``clone_fallback_to_fetch``): no record is written here (it runs
        inside ``cache()``, which writes it).

        ``image_meta`` is the caller's metadata of the image (Nova's
        ``IMAGE_API.get(context, id, include_locations=True)`` dict, or an
        ImageMeta); without it the image source's ``get_meta`` is asked
        (``image_id_or_uri`` may also be an ``rbd://`` URL itself). Nova's
        rules: the image must be raw (or iso), and the first location that
        is in this cluster (fsid) and readable at its snapshot is cloned.
        Each location is judged and cloned through ``self.driver``
        (``is_cloneable(location, image_meta)``, ``clone(location, name)``:
        Nova's calls), with the caller's location and metadata as given.
        If none is and ``copy_to_store`` and ``[libvirt]
        images_rbd_glance_store_name`` is set, the image source is asked to
        copy the image into that store (:meth:`copy_to_store`) and the
        clone tried once more with its metadata read again.

        Raises :class:`CloneNotPossible` (an ImageUnacceptable: the caller
        downloads the image instead) when the image cannot be cloned;
        nothing is created then. DiskExists if the disk exists.
        """
        if image_meta is None and isinstance(image_id_or_uri, str) and \
                image_id_or_uri.startswith('rbd://'):
            with self._connect() as conn:
                try:
                    self._parent_at(conn, image_id_or_uri)
                except (exception.ImageBackendError, rados.Error,
                        librbd.Error) as e:
                    raise CloneNotPossible(image_id=image_id_or_uri,
                                           reason=str(e))
            self._clone_location(image_id_or_uri, 'clone() of an rbd:// URL')
            return
        if image_meta is None:
            image_meta = self._source_meta(context, image_id_or_uri)
            lister = 'image source'
        else:
            lister = "caller's image metadata"
        view = rbd_locations.image_view(image_meta, image_id_or_uri)
        if view.disk_format not in formats.RAW_LIKE:
            raise CloneNotPossible(
                image_id=view.id, reason=f'the image is '
                f'{view.disk_format}, not raw: it cannot be cloned as a disk')
        # Each location as the caller gave it, through self.driver (Nova's
        # is_cloneable and clone), so a driver put in its place is used.
        reasons = []
        for location in rbd_locations.raw_locations(image_meta):
            why_not = self._why_not_cloneable(location, image_meta)
            if not why_not:
                url = rbd_locations.location_url(location)
                self._clone_location(
                    location, f'the {lister} has it in this cluster at {url}')
                return
            if (rbd_locations.location_url(location) or '').startswith(
                    'rbd://'):
                reasons.append(why_not)
        store = self.conf.libvirt.images_rbd_glance_store_name
        if store and copy_to_store:
            self.copy_to_store(context, image_meta)
            # Once: the copy is done, its location is read afresh.
            return self.clone(context, view.id, copy_to_store=False)
        raise CloneNotPossible(
            image_id=view.id, reason='; '.join(reasons) or
            f'the {lister} lists no rbd:// location')

    def _why_not_cloneable(self, location: Any, image_meta: Any) -> str:
        """'' if ``location`` can be cloned here, else why not."""
        if isinstance(self.driver, rbd_driver.RbdDriver):
            return self.driver.why_not_cloneable(location, image_meta)
        if self.driver.is_cloneable(location, image_meta):
            return ''
        return f'{rbd_locations.location_url(location) or location!r}: ' \
            'not cloneable in this cluster'

    def _clone_location(self, location: Any, why: str) -> None:
        """Clone ``location`` as this disk (through ``self.driver``; no
        resize: Nova's create_image grows it); nothing is left on failure,
        a disk that exists is DiskExists (the driver's clone: one call, no
        look before, as Nova's)."""
        self.driver.clone(location, self.rbd_name)
        url = rbd_locations.location_url(location) or str(location)
        try:
            _fsid, pool, name, snap = parse_location(url)
            parent = f'{pool}/{name}@{snap}'
        except exception.InvalidInput:
            parent = url
        self._legacy_how = {'how': 'clone-from-location', 'why': why,
                            'parent': parent}

    def _source_meta(self, context: Any,
                     image_id: str) -> sources.ImageMeta:
        """The image source's metadata of ``image_id``."""
        source = self.image_cache.source
        if source is None:
            raise CloneNotPossible(
                image_id=image_id,
                reason='there is no image source to ask for locations')
        try:
            return source.get_meta(context, image_id)
        except exception.ImageNotFound:
            raise CloneNotPossible(
                image_id=image_id,
                reason='the image source does not know the image')

    def copy_to_store(self, context: Any,
                      image_meta: Mapping[str, Any] | sources.ImageMeta
                      ) -> None:
        """Have the image source copy the image (``image_meta['id']``) into
        the Glance store of this cluster, ``[libvirt]
        images_rbd_glance_store_name``, and wait until it is there (Nova's
        ``Rbd.copy_to_store``).

        The source must implement :class:`~imagebackend.sources.
        StoreCopier`; its ``get_meta`` is read at once and then every
        ``images_rbd_glance_copy_poll_interval`` s, for at most
        ``images_rbd_glance_copy_timeout`` s (0: no limit). Raises
        :class:`StoreCopyFailed` if the source cannot copy or reports the
        copy failed, :class:`StoreCopyTimeout` on timeout (both are
        CloneNotPossible). Other errors of the source propagate, as Nova
        lets them."""
        libvirt = self.conf.libvirt
        store = libvirt.images_rbd_glance_store_name
        image_id = rbd_locations.image_view(image_meta).id
        source = self.image_cache.source
        if not isinstance(source, sources.StoreCopier):
            raise StoreCopyFailed(image_id=image_id, store=store,
                                  reason='the image source cannot copy '
                                  'images between stores')
        try:
            source.copy_to_store(context, image_id, store)
        except exception.ImageUnacceptable as e:
            raise StoreCopyFailed(image_id=image_id, store=store,
                                  reason=str(e))
        LOG.info('Asked the image source to copy image %s to the rbd store '
                 '%s', image_id, store)

        def cloneable(view: rbd_locations.ImageView) -> bool:
            # Ceph is asked only once an rbd:// location is listed: no
            # connection held open for the whole wait.
            if not view.rbd_urls or view.disk_format not in formats.RAW_LIKE:
                return False
            with self._connect() as conn:
                return self._cloneable_parent(
                    conn, view, 'image source')[0] is not None

        self.wait_for_store_copy(
            lambda: rbd_locations.image_view(
                self._source_meta(context, image_id), image_id),
            store, cloneable,
            interval=libvirt.images_rbd_glance_copy_poll_interval,
            timeout=libvirt.images_rbd_glance_copy_timeout)
        LOG.info('Image %s copied to the rbd store %s', image_id, store)
