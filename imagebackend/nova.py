"""The library's Nova face: ``nova.virt.libvirt.imagebackend``, on the library.

An unmodified Nova uses it in place of its own module::

    import sys
    import imagebackend.nova
    sys.modules['nova.virt.libvirt.imagebackend'] = imagebackend.nova

(before ``nova.virt.libvirt.driver`` is imported). This is the only module of
the library that imports Nova. It maps, and does nothing else:

* names: the classes Nova's driver and tests reach (``Image``, ``Flat``,
  ``Qcow2``, ``Lvm``, ``Rbd``, ``Ploop``, ``Backend``) with Nova's
  constructor signatures, and the module attributes Nova's tests patch
  (``fileutils``, ``disk``, ``utils``, ``images``, ``lvm``, ``dmcrypt``,
  ``libvirt_utils``, ``LOG``, ``IMAGE_API``);
* types: ``libvirt_info`` / ``libvirt_fs_info`` return Nova's
  ``nova.virt.libvirt.config`` objects, ``Backend.backend()`` a class;
* errors: the library's typed errors leave as the Nova exceptions the
  compute manager acts on (a disk smaller than its image fails the build
  instead of rescheduling it; a clone that cannot happen is Nova's
  ``ImageUnacceptable``, its signal to download instead), chained to the
  library's error.

Everything a disk does happens in the library, on the host's Nova config
(``nova.conf.CONF``), with its metadata records.
"""

from __future__ import annotations

import contextlib
import os

from castellan import key_manager
from oslo_concurrency import processutils
from oslo_log import log as logging
from oslo_service import loopingcall
from oslo_utils import fileutils  # noqa: F401
from oslo_utils import units  # noqa: F401

import nova.conf
from nova import exception
from nova.image import glance
import nova.privsep.path
from nova.storage import rbd_utils  # noqa: F401
from nova import utils  # noqa: F401
from nova.virt.disk import api as disk  # noqa: F401
from nova.virt.image import model as imgmodel
from nova.virt import images  # noqa: F401
from nova.virt.libvirt import config as vconfig
from nova.virt.libvirt.storage import lvm  # noqa: F401
from nova.virt.libvirt import utils as libvirt_utils  # noqa: F401

from imagebackend import backend as lib_backend
from imagebackend import backend_types
# The library's dm-crypt commands, under the name Nova's tests patch (same
# functions and signatures as nova.virt.libvirt.storage.dmcrypt).
from imagebackend import dmcrypt  # noqa: F401
from imagebackend import exception as lib_exception
from imagebackend import image as lib_image
from imagebackend import names
from imagebackend import sources as lib_sources
from imagebackend.backends import flat as lib_flat
from imagebackend.backends import lvm as lib_lvm
from imagebackend.backends import ploop as lib_ploop
from imagebackend.backends import qcow2 as lib_qcow2
from imagebackend.backends import rbd as lib_rbd
from imagebackend.backends import rbd_locations

CONF = nova.conf.CONF
LOG = logging.getLogger(__name__)
IMAGE_API = glance.API()


# -- errors ------------------------------------------------------------------

def _nova_error(e: lib_exception.ImageBackendError) -> Exception | None:
    """The Nova exception the compute manager expects for ``e``, if any."""
    kw = e.kwargs
    if isinstance(e, lib_exception.DiskTooSmall):
        return exception.FlavorDiskSmallerThanImage(
            flavor_size=kw.get('size'), image_size=kw.get('image_size'))
    if isinstance(e, lib_exception.ImageNotFound):
        return exception.ImageNotFound(image_id=kw.get('image_id'))
    if isinstance(e, lib_exception.ImageUnacceptable):
        return exception.ImageUnacceptable(image_id=kw.get('image_id'),
                                           reason=str(e))
    if isinstance(e, lib_exception.EncryptionError):
        # Nova's Image and Lvm raise InternalError for each of these.
        return exception.InternalError(str(e))
    if isinstance(e, lib_exception.CorruptRecord):
        return exception.InvalidDiskInfo(reason=str(e))
    if isinstance(e, lib_exception.UnknownBackend):
        # Nova's Backend.backend() raises a bare RuntimeError for it.
        return RuntimeError(str(e))
    if isinstance(e, lib_exception.ProcessError):
        return processutils.ProcessExecutionError(
            stdout=e.stdout, stderr=e.stderr, exit_code=e.exit_code,
            cmd=e.cmd)
    return None


@contextlib.contextmanager
def _nova_errors():
    try:
        yield
    except lib_exception.ImageBackendError as e:
        mapped = _nova_error(e)
        if mapped is None:
            raise
        raise mapped from e


def _mapped(owner: type, name: str):
    """A method running the next class's ``name`` (after ``owner`` in the
    instance's MRO) with the library's errors mapped to Nova's."""
    def method(self, *args, **kwargs):
        with _nova_errors():
            return getattr(super(owner, self), name)(*args, **kwargs)
    method.__name__ = name
    return method


def _map_errors(cls: type, library_cls: type, calls) -> None:
    """Give ``cls`` an error-mapping ``name`` for each of ``calls`` that
    ``library_cls`` has and ``cls`` does not define itself."""
    for name in calls:
        if hasattr(library_cls, name) and name not in cls.__dict__:
            setattr(cls, name, _mapped(cls, name))


# What Nova's driver calls on a disk (whose errors it must see as Nova's).
_CALLS = ('create_image', 'resize_image', 'verify_base_size',
          'get_disk_size', 'snapshot_extract', 'create_from_image',
          'create_from_func', 'create_from_content',
          'check_backing_from_image', 'check_backing_from_func', 'clone',
          'flatten', 'direct_snapshot', 'cleanup_direct_snapshot',
          'import_file', 'create_snap', 'remove_snap', 'rollback_to_snap',
          'exists', 'resolve_driver_format', 'correct_format',
          'copy_to_store')


# -- types -------------------------------------------------------------------

def _nova_disk(info) -> vconfig.LibvirtConfigGuestDisk:
    """Nova's ``LibvirtConfigGuestDisk`` with the library's disk's fields."""
    disk_config = vconfig.LibvirtConfigGuestDisk()
    for field in ('source_type', 'source_device', 'driver_name',
                  'driver_format', 'driver_cache', 'driver_discard',
                  'driver_io', 'source_path', 'source_protocol',
                  'source_name', 'auth_username', 'auth_secret_type',
                  'auth_secret_uuid', 'target_dev', 'target_bus',
                  'boot_order', 'readonly', 'serial',
                  'disk_read_bytes_sec', 'disk_read_iops_sec',
                  'disk_write_bytes_sec', 'disk_write_iops_sec',
                  'disk_total_bytes_sec', 'disk_total_iops_sec'):
        setattr(disk_config, field, getattr(info, field))
    disk_config.source_hosts = list(info.source_hosts)
    disk_config.source_ports = list(info.source_ports)
    if info.device_addr is not None:
        addr = vconfig.LibvirtConfigGuestDeviceAddressDrive()
        for field in ('controller', 'bus', 'target', 'unit'):
            setattr(addr, field, getattr(info.device_addr, field))
        disk_config.device_addr = addr
    return disk_config


def _nova_filesys(info) -> vconfig.LibvirtConfigGuestFilesys:
    fs = vconfig.LibvirtConfigGuestFilesys()
    for field in ('source_type', 'source_file', 'source_dev', 'driver_type',
                  'driver_format', 'target_dir'):
        setattr(fs, field, getattr(info, field))
    return fs


# Library model class name -> Nova's (same fields).
_MODELS = {'LocalFileImage': imgmodel.LocalFileImage,
           'LocalBlockImage': imgmodel.LocalBlockImage,
           'RBDImage': imgmodel.RBDImage}


def _nova_model(model):
    cls = _MODELS[type(model).__name__]
    if cls is imgmodel.LocalFileImage:
        return cls(model.path, model.format)
    if cls is imgmodel.LocalBlockImage:
        return cls(model.path)
    return cls(model.name, model.pool, model.user, model.password,
               model.servers)


# -- images from Glance --------------------------------------------------------

# Glance multistore fields Nova's client gives at the top level; the
# library reads them from ImageMeta.properties.
_STORE_FIELDS = ('stores', 'os_glance_importing_to_stores',
                 'os_glance_failed_import')


class GlanceImageSource:
    """The library's :class:`~imagebackend.sources.ImageSource` (and
    ``StoreCopier``) on Nova's image API: what Glance says an image is, its
    bytes, and the copy of an image into another Glance store."""

    def get_meta(self, context, image_id: str) -> lib_sources.ImageMeta:
        with _glance_errors(image_id):
            meta = IMAGE_API.get(context, image_id, include_locations=True)
        properties = dict(meta.get('properties') or {})
        for field in _STORE_FIELDS:
            if field in meta:
                properties[field] = meta[field]
        return lib_sources.ImageMeta(
            id=meta.get('id', image_id),
            disk_format=meta.get('disk_format') or 'raw',
            size=meta.get('size'), name=meta.get('name'),
            locations=tuple(loc['url'] for loc in meta.get('locations') or ()
                            if loc.get('url')),
            properties=properties,
            virtual_size=meta.get('virtual_size'))

    def open(self, context, image_id: str):
        with _glance_errors(image_id):
            return iter(IMAGE_API.download(context, image_id))

    def copy_to_store(self, context, image_id: str, store: str) -> None:
        try:
            IMAGE_API.copy_image_to_store(context, image_id, store)
        except exception.ImageBadRequest:
            pass  # another host started the same copy: wait for it
        except exception.ImageImportImpossible as e:
            raise lib_exception.ImageUnacceptable(image_id=image_id,
                                                  reason=str(e))


@contextlib.contextmanager
def _glance_errors(image_id: str):
    try:
        yield
    except exception.ImageNotFound:
        raise lib_exception.ImageNotFound(image_id=image_id)


# -- the library, on Nova's config ----------------------------------------------

class _LibraryBackend(lib_backend.Backend):
    """The library's Backend on ``nova.conf.CONF``, making the face's
    classes, so a disk opened from its record is still one Nova knows."""

    def image_class(self, image_type: str) -> type[lib_image.Image]:
        return _FACE_CLASSES[self._type(image_type)]


class _KeyManager:
    """Castellan's key manager on Nova's config, made on first use (as
    Nova's Lvm makes it only for an instance with an ephemeral key)."""

    def get(self, context, key_uuid):
        return key_manager.API(CONF).get(context, key_uuid)


def _library(use_cow: bool | None = None) -> _LibraryBackend:
    # Read per call: Nova (and its tests) change instances_path and the
    # image options while the process runs.
    return _LibraryBackend(use_cow, conf=CONF, source=GlanceImageSource(),
                           key_manager=_KeyManager())


# -- the classes Nova knows ------------------------------------------------------

class Image(lib_image.Image):
    """Nova's ``Image``: the library's disk, with Nova's signatures and
    return types. Abstract: Nova makes one of the backends below."""

    def __init__(self, instance=None, disk_name=None, path=None,
                 disk_info_mapping=None, *, backend=None, record=None):
        if backend is None:
            backend = _library()
        with _nova_errors():
            super().__init__(instance, disk_name, path, disk_info_mapping,
                             backend=backend, record=record)

    def libvirt_info(self, cache_mode, extra_specs, boot_order=None,
                     disk_unit=None):
        if self.disk_info_mapping is None:
            # Nova's type for it (its driver catches nothing here).
            raise AttributeError(
                'Image must have disk_info_mapping to call libvirt_info()')
        with _nova_errors():
            info = super().libvirt_info(cache_mode, extra_specs, boot_order,
                                        disk_unit)
        return _nova_disk(info)

    def libvirt_fs_info(self, target, driver_type=None):
        with _nova_errors():
            return _nova_filesys(super().libvirt_fs_info(target, driver_type))

    def get_model(self, connection):
        with _nova_errors():
            return _nova_model(super().get_model(connection))

    def _get_driver_format(self):
        """Nova's name for the format the disk is declared with (its base
        class's; Nova's Flat probes, the library never does). Nova's own
        driver tests put it in place of ``resolve_driver_format``."""
        return self.driver_format

    def cache(self, fetch_func, filename, size=None, safe=False, *args,
              **kwargs):
        # Nova joins the name to the cache directory, so a path to a file
        # in it names the same entry; any other path the library refuses.
        if os.path.dirname(filename) == self.image_cache.base_dir:
            filename = os.path.basename(filename)
        with _nova_errors():
            return super().cache(fetch_func, filename, size, safe, *args,
                                 **kwargs)


_map_errors(Image, lib_image.Image, _CALLS)


class Flat(Image, lib_flat.Flat):
    """Nova's ``Flat`` (``images_type = raw|flat``)."""


class Qcow2(Image, lib_qcow2.Qcow2):
    """Nova's ``Qcow2`` (``images_type = qcow2``)."""


class Lvm(Image, lib_lvm.Lvm):
    """Nova's ``Lvm`` (``images_type = lvm``)."""

    escape = staticmethod(lib_lvm.escape)


class Rbd(Image, lib_rbd.Rbd):
    """Nova's ``Rbd`` (``images_type = rbd``)."""

    def clone(self, context, image_id_or_uri, copy_to_store=True):
        """Clone from the locations Glance gives for the image (Nova's
        driver passes only its id); Nova's ImageUnacceptable when it
        cannot, which Nova's driver answers with a download."""
        image_meta = IMAGE_API.get(context, image_id_or_uri,
                                   include_locations=True)
        with _nova_errors():
            return lib_rbd.Rbd.clone(self, context, image_id_or_uri,
                                     copy_to_store=copy_to_store,
                                     image_meta=image_meta)


    @staticmethod
    def wait_for_store_copy(read, store, cloneable, interval, timeout):
        """The library's wait for a Glance store copy, run by oslo's
        looping call as Nova's own is: green under nova-compute's
        eventlet, where the library's plain sleep loop would not be."""
        seen = {}

        def poll():
            seen['view'] = view = read()
            state = rbd_locations.copy_state(view, store, cloneable)
            if state == rbd_locations.DONE:
                raise loopingcall.LoopingCallDone(True)
            if state == rbd_locations.FAILED_STATE:
                raise loopingcall.LoopingCallDone('failed import')

        image_id = (lambda: getattr(seen.get('view'), 'id', None))
        timer = loopingcall.FixedIntervalWithTimeoutLoopingCall(poll)
        try:
            result = timer.start(interval=interval, timeout=timeout).wait()
        except loopingcall.LoopingCallTimeOut:
            raise rbd_locations.StoreCopyTimeout(
                image_id=image_id(), store=store, timeout=timeout)
        if result is not True:
            raise rbd_locations.StoreCopyFailed(
                image_id=image_id(), store=store, reason=result)
        return seen['view']


class Ploop(Image, lib_ploop.Ploop):
    """Nova's ``Ploop`` (``images_type = ploop``)."""


# Nova's class of each image type: the library's names (backend_types),
# each backend's class of the same name above ('raw' is 'flat's).
_FACE_CLASSES = {name: globals()[spec.rpartition(':')[2]]
                 for name, spec in backend_types.BACKENDS.items()}
for _cls in dict.fromkeys(_FACE_CLASSES.values()):  # Flat once
    # What only this backend has (Flat.correct_format, Rbd.copy_to_store).
    _map_errors(_cls, _cls.__mro__[2],
                [n for n in _CALLS if not hasattr(lib_image.Image, n)])
del _cls


class Backend:
    """Nova's ``Backend(use_cow)``: image type -> class, disks by name."""

    def __init__(self, use_cow):
        self.use_cow = use_cow

    @property
    def BACKEND(self) -> dict:
        default = Qcow2 if self.use_cow else Flat
        return dict(_FACE_CLASSES, default=default)

    def backend(self, image_type=None) -> type[Image]:
        """The class for ``image_type`` (default: the host's)."""
        image_type = image_type or CONF.libvirt.images_type
        image = self.BACKEND.get(image_type)
        if not image:
            raise RuntimeError('Unknown image_type=%s' % image_type)
        return image

    def by_name(self, instance, name, image_type=None,
                disk_info_mapping=None) -> Image:
        """The disk ``name`` of ``instance``. An existing disk is opened as
        its record says (whatever today's ``images_type``); Nova's driver
        may pass the disk's full path as its name."""
        name = _disk_name(instance, name)
        library = _library(self.use_cow)
        with _nova_errors():
            record = library.records.get(names.check_instance_uuid(
                instance.uuid), name)
            if record is not None and record.created:
                return library.from_metadata(
                    instance, name, disk_info_mapping=disk_info_mapping)
        # Nova's constructor signature only: whatever Backend.backend()
        # returns is called as Nova calls it (Nova's own test fixture puts
        # a function of that signature there).
        return self.backend(image_type)(
            instance=instance, disk_name=name,
            disk_info_mapping=disk_info_mapping)

    def by_libvirt_path(self, instance, path, image_type=None) -> Image:
        return self.backend(image_type)(instance=instance, path=path)


def _disk_name(instance, name: str) -> str:
    """A disk name from what Nova passes: a name, or a path in the
    instance's directory (``_create_images_and_backing``)."""
    if os.sep in name:
        instance_dir = libvirt_utils.get_instance_path(instance)
        if os.path.dirname(os.path.abspath(name)) == os.path.abspath(
                instance_dir):
            return os.path.basename(name)
    return name


def _update_utime_ignore_eacces(path):
    """Nova's helper, kept for callers that patch or call it."""
    try:
        nova.privsep.path.utime(path)
    except OSError as e:
        if e.errno != 13:
            raise
        LOG.warning('Ignoring failure to update utime of %s: %s', path, e)


__all__ = ['Backend', 'Flat', 'GlanceImageSource', 'Image', 'Lvm', 'Ploop',
           'Qcow2', 'Rbd']
