"""The new interface implemented on the legacy ``Image.cache()``.

A backend that only has Nova's ``create_image()`` gets ``create_from_image``
and ``create_from_func`` from here, calling ``cache()`` exactly as Nova's
driver does: for an image, filename = sha1(image id) with ``context`` and
``image_id``; for a template function, ``safe=True`` plus ``ephemeral_size``
(GiB) or ``swap_mb`` chosen by the cache-name prefix as Nova names its
templates. Backends with a native implementation override these methods.
"""

from __future__ import annotations

from typing import Any, Callable

from oslo_utils import units

from imagebackend import exception
from imagebackend import names


def template_kwargs(cache_name: str, size: int | None) -> dict[str, Any]:
    """The size keyword Nova's template functions take, from the name."""
    if cache_name.startswith('ephemeral'):
        return {'ephemeral_size': None if size is None else size // units.Gi}
    if cache_name.startswith('swap'):
        return {'swap_mb': None if size is None else size // units.Mi}
    return {}


def _image_fetcher(image, fallback: str | None,
                   size: int | None = None) -> Callable[..., None]:
    """A Nova-style fetch_func: ``fetch(target=..., context=..., image_id=...)``.

    It runs inside cache()'s lock, so it fetches without taking it again.
    ``size`` (the disk's) lets the fetch refuse a larger image early.
    """
    def fetch_image(target: str, context: Any = None, image_id: str = '',
                    *args, **kwargs) -> None:
        extra = {} if size is None else {'size': size}
        image.image_cache.fetch_into(context, image_id, target,
                                     fallback=fallback, **extra)
    return fetch_image


def _template_fetcher(image, func: Callable[[str], None], cache_name: str,
                      fallback: str | None) -> Callable[..., None]:
    """A Nova-style template function around ``func(target)``."""
    cache = image.image_cache

    def prepare_template(target: str, *args, **kwargs) -> None:
        if target != cache.path(cache_name):
            func(target)  # written straight into the disk (Flat)
            return
        if fallback and cache.transport:
            try:
                cache.side_load(fallback, cache_name, 'template', cache_name,
                                target)
                return
            except exception.TransportError:
                pass  # regenerate below
        # Into the cache: atomically, with its sidecar.
        cache.write_template(cache_name, func, target)
    return prepare_template


def _begin(image, cache_name: str) -> None:
    """New-interface semantics: create means create; existing is an error.
    A cached base is used for a new disk only if it is still what its
    sidecar says (CorruptCacheEntry otherwise), as on the native path."""
    if image.exists():
        raise exception.DiskExists(location=image.path)
    image.image_cache.check(cache_name)


def create_from_image(image, context: Any, image_id: str,
                      size: int | None = None,
                      fallback: str | None = None) -> None:
    # One decision, under the instance's lock: "missing" here must still
    # hold when cache() looks (it would take a disk another thread made
    # meanwhile for one to keep).
    with image._instance_locked():
        _begin(image, names.image_cache_name(image_id))
        with image.creation_path('shim'):
            image.cache(fetch_func=_image_fetcher(image, fallback, size),
                        filename=names.image_cache_name(image_id), size=size,
                        context=context, image_id=image_id)


def create_from_func(image, context: Any, func: Callable[[str], None],
                     cache_name: str, size: int | None = None,
                     fallback: str | None = None) -> None:
    names.check_cache_name(cache_name)
    with image._instance_locked():  # as in create_from_image
        _begin(image, cache_name)
        with image.creation_path('shim'):
            image.cache(fetch_func=_template_fetcher(image, func, cache_name,
                                                     fallback),
                        filename=cache_name, size=size, safe=True,
                        context=context, **template_kwargs(cache_name, size))


def _require_disk(image) -> None:
    if not image.exists():
        raise exception.DiskNotFound(location=image.path)


def check_backing_from_image(image, context: Any, image_id: str,
                             fallback: str | None = None) -> None:
    """cache() on an existing disk only recreates a missing template."""
    _require_disk(image)
    image.cache(fetch_func=_image_fetcher(image, fallback),
                filename=names.image_cache_name(image_id),
                context=context, image_id=image_id)


def check_backing_from_func(image, context: Any, func: Callable[[str], None],
                            cache_name: str,
                            fallback: str | None = None) -> None:
    names.check_cache_name(cache_name)
    _require_disk(image)
    image.cache(fetch_func=_template_fetcher(image, func, cache_name,
                                             fallback),
                filename=cache_name, safe=True, context=context,
                **template_kwargs(cache_name, None))

