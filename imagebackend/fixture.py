"""A fake image backend for compute-driver tests.

:class:`ImageBackendFixture` is modelled on Nova's ``ImageBackendFixture``
(now ``nova.tests.fixtures.LibvirtImageBackendFixture``): it replaces the
backend at its entry points, so every :class:`imagebackend.Backend` the code
under test builds hands out autospec mocks of :class:`imagebackend.Image`,
one per disk name, that remember what was done to them. Nothing touches
storage, no template function and no image download runs.
"""

from __future__ import annotations

import collections
import contextlib
import os
from typing import Callable, Iterable, NamedTuple
from unittest import mock

try:
    import fixtures
except ImportError as e:  # a test extra, not a runtime requirement
    raise ImportError(
        'imagebackend.fixture needs the test extras: pip install '
        f"'imagebackend[test]' ({e})") from e

from imagebackend import backend as backend_mod
from imagebackend import exception
from imagebackend import image as image_mod
from imagebackend import names
from imagebackend import records as records_mod

__all__ = ['ImageBackendFixture', 'ImageCall', 'TemplateCall']

# The placeholder instance directory root when a Backend has no conf.
FAKE_INSTANCES_PATH = '/fake'


class ImageCall(NamedTuple):
    """One ``create_from_image`` that created a disk."""

    name: str
    image_id: str
    size: int | None
    fallback: str | None


class TemplateCall(NamedTuple):
    """One ``create_from_func`` that created a disk (``func`` never run)."""

    name: str
    cache_name: str
    size: int | None
    func: Callable[[str], None]


class _Disks(collections.defaultdict):
    """disk name -> mock; a missing name gets a fresh fake, as in Nova."""

    def __init__(self, factory: Callable[[str], mock.MagicMock]):
        super().__init__(None)
        self._factory = factory

    def __missing__(self, name: str) -> mock.MagicMock:
        disk = self._factory(name)
        self[name] = disk
        return disk

    def copy(self) -> dict[str, mock.MagicMock]:
        return dict(self)

    __copy__ = copy


class ImageBackendFixture(fixtures.Fixture):
    """Fake the image backend; inspect what happened to each disk.

    While set up, ``Backend.backend``, ``Backend.from_metadata`` and
    ``Backend.batch`` (which then writes no records) are replaced
    (``by_name`` and ``by_libvirt_path`` go through ``backend``), so a real
    ``imagebackend.Backend(...)`` built by the code under test hands out
    fakes. Every construction for one disk name returns the same object,
    ``fixture.disks[name]``: a ``mock.create_autospec(Image, instance=True)``
    with real ``disk_name``, ``path`` (``<instances_path>/<uuid>/<name>``),
    ``location``, ``instance``, ``disk_info_mapping``, ``image_type`` (the
    concrete type asked for: ``default`` follows the Backend's ``use_cow``,
    ``raw`` is ``flat``), the real class's ``capabilities``,
    ``driver_format`` and a ``record`` (a real :class:`DiskRecord` once the
    disk exists, else None). Each construction sets ``image_type`` and
    ``path`` again (the object is shared, as in Nova's fixture); a
    ``disk_info_mapping`` of None leaves the previous one. Disks are keyed by
    name only: two instances' ``disk`` are one fake.

    Behaviour of the fakes:

    * ``exists()`` is False until the disk is created (``create_from_image``,
      ``create_from_func``, ``create_empty`` or ``cache``), unless the
      fixture was given ``existing=[names]`` or ``exists=callable(name)``
      (asked on every call while the disk was neither created nor deleted);
      ``delete()`` / ``remove_disk()`` make it not exist again.
    * ``create_from_image`` / ``create_from_func`` / ``create_empty`` raise
      ``DiskExists`` on an existing disk, like the real ones; ``cache()``
      does not (Nova's contract). Template functions and fetch functions are
      never called: they are values to inspect (``template_calls``).
    * ``create_empty`` raises ``NotSupported`` on a backend whose disks need
      a cache entry (Qcow2), like the real one.
    * ``virtual_size()`` is the size last given to a creation,
      ``resize_image`` or :meth:`set_size`; 0 when none was.
      ``resize_image`` refuses to shrink (``CannotShrink``) and needs the
      disk to exist (``DiskNotFound``); so do ``check_backing_*``.
    * ``from_metadata`` raises ``RecordNotFound`` for a disk that does not
      exist; otherwise its fake reports the record's backend: the one set
      with :meth:`set_backend`, else the type it was created as, else (an
      ``existing`` disk) the host's configured type.
    * ``libvirt_info()`` returns a real ``libvirt_config.GuestDisk`` for a
      file disk; ``libvirt_fs_info()`` a real ``GuestFilesys``;
      ``direct_snapshot`` raises NotImplementedError; ``create_snap``,
      ``rollback_to_snap``, ``remove_snap`` and the rest are plain mocks.

    Inspection: :attr:`disks`, :attr:`created_disks`, :meth:`calls`,
    :attr:`image_calls`, :attr:`template_calls`. The fixture does not write
    to a Backend's record store: ``backend.records`` knows nothing of fakes.

    Nova-style (testtools / ``fixtures.TestWithFixtures``)::

        self.disks = self.useFixture(ImageBackendFixture()).disks

    pytest::

        @pytest.fixture
        def fake_backend(request):
            fx = ImageBackendFixture()
            fx.setUp()
            request.addfinalizer(fx.cleanUp)
            return fx

    or, in a test::

        with ImageBackendFixture(existing=['disk']) as fx:
            driver.finish_migration(...)
            assert fx.created_disks == ['disk.swap']

    State (what was created, sizes, overrides) lives from construction
    through cleanUp, so it can be inspected after a ``with`` block; a setUp
    after a cleanUp starts afresh.
    """

    def __init__(self, exists: Callable[[str], bool] | None = None,
                 existing: Iterable[str] | None = None) -> None:
        """``exists(name)``: whether a disk not created or deleted here
        exists; ``existing``: names of disks that exist from the start."""
        super().__init__()
        self._exists_cb = exists
        self._existing = frozenset(existing or ())
        self._stale = False
        self._reset()

    def _reset(self) -> None:
        self.disks: dict[str, mock.MagicMock] = _Disks(self._new_disk)
        self.created_disks: list[str] = []
        self.image_calls: list[ImageCall] = []
        self.template_calls: list[TemplateCall] = []
        self._present: dict[str, bool] = {}    # after a create or delete
        self._sizes: dict[str, int] = {}
        self._backends: dict[str, str] = {}    # set_backend overrides
        self._created_as: dict[str, str] = {}  # image type at creation
        self._formats: dict[str, str] = {}
        self._sources: dict[str, tuple[str, str | None]] = {}

    def _setUp(self) -> None:
        if self._stale:
            self._reset()
        self.addCleanup(setattr, self, '_stale', True)
        fixture = self

        def fake_backend(backend_self, image_type: str | None = None):
            concrete = backend_self._type(image_type)
            # Unknown / not-yet-implemented types fail as they really do.
            backend_mod.backend_class(concrete)

            def constructor(instance=None, disk_name=None, path=None,
                            disk_info_mapping=None, **_ignored):
                return fixture._open(backend_self, concrete, instance,
                                     disk_name, path, disk_info_mapping)
            return constructor

        def fake_from_metadata(backend_self, instance, name,
                               disk_info_mapping=None, *,
                               created_here=True):
            names.check_disk_name(name)
            if not fixture._exists(name):
                raise exception.RecordNotFound(
                    disk_name=name, instance=getattr(instance, 'uuid', None))
            concrete = backend_self._type(fixture._record_backend(name))
            backend_mod.backend_class(concrete)
            return fixture._open(backend_self, concrete, instance, name,
                                 None, disk_info_mapping)

        self.useFixture(fixtures.MonkeyPatch(
            'imagebackend.backend.Backend.backend', fake_backend))
        @contextlib.contextmanager
        def fake_batch(backend_self, instance, disks=()):
            # The fakes keep no records: nothing to write ahead or after.
            names.check_instance_uuid(instance.uuid)
            yield None

        self.useFixture(fixtures.MonkeyPatch(
            'imagebackend.backend.Backend.from_metadata', fake_from_metadata))
        self.useFixture(fixtures.MonkeyPatch(
            'imagebackend.backend.Backend.batch', fake_batch))

    # -- test-facing API ------------------------------------------------------

    def set_size(self, name: str, size: int) -> None:
        """Make disk ``name``'s ``virtual_size()`` return ``size`` bytes."""
        self._sizes[name] = int(size)

    def set_backend(self, name: str, image_type: str) -> None:
        """Make disk ``name``'s record say it is on ``image_type``: what
        ``from_metadata`` opens it as, whatever the host's config says."""
        if image_type not in backend_mod.KNOWN_TYPES:
            raise exception.UnknownBackend(
                image_type=image_type,
                known=', '.join(backend_mod.KNOWN_TYPES))
        self._backends[name] = image_type

    def calls(self, name: str) -> list:
        """Every call made on disk ``name``'s fake (its ``mock_calls``)."""
        if name not in self.disks:
            return []
        return self.disks[name].mock_calls

    # -- the fakes ------------------------------------------------------------

    def _exists(self, name: str) -> bool:
        if name in self._present:
            return self._present[name]
        if name in self._existing:
            return True
        return bool(self._exists_cb(name)) if self._exists_cb else False

    def _record_backend(self, name: str) -> str | None:
        return self._backends.get(name) or self._created_as.get(name)

    def _open(self, backend_self, image_type: str, instance, disk_name,
              path, disk_info_mapping) -> mock.MagicMock:
        if disk_name is None:
            if path is None:
                raise exception.InvalidInput(
                    reason='a disk needs an instance and a name, or a path')
            disk_name = os.path.basename(path)
        names.check_disk_name(disk_name)
        conf = getattr(backend_self, 'conf', None)
        uuid = getattr(instance, 'uuid', None)
        if path is None:
            if uuid is None:
                raise exception.InvalidInput(
                    reason='a disk needs an instance and a name, or a path')
            root = getattr(conf, 'instances_path', None) or \
                FAKE_INSTANCES_PATH
            path = os.path.join(root, uuid, disk_name)
        cls = backend_mod.backend_class(image_type)
        disk = self.disks[disk_name]
        disk.path = path
        disk.instance = instance
        if disk_info_mapping is not None:
            disk.disk_info_mapping = disk_info_mapping
        disk.image_type = image_type
        disk.capabilities = cls.capabilities
        disk.SUPPORTS_CLONE = cls.SUPPORTS_CLONE
        disk.SUPPORTS_LUKS = cls.SUPPORTS_LUKS
        disk.is_block_dev = cls.capabilities.block_device
        disk.source_type = 'block' if disk.is_block_dev else 'file'
        disk.driver_format = cls.fixed_format or self._formats.get(
            disk_name, 'raw')
        disk.conf = conf
        disk.instance_uuid = uuid
        disk.instance_dir = (None if uuid is None else os.path.join(
            getattr(conf, 'instances_path', None) or FAKE_INSTANCES_PATH,
            uuid))
        libvirt = getattr(conf, 'libvirt', None)
        disk.discard_mode = getattr(libvirt, 'hw_disk_discard', None)
        disk.driver_io = ('native' if getattr(conf, 'preallocate_images',
                                              None) == 'space' else None)
        disk.preallocate = disk.driver_io == 'native'
        return disk

    def _new_disk(self, name: str) -> mock.MagicMock:
        disk = mock.create_autospec(image_mod.Image, instance=True,
                                    name=f'disk[{name!r}]')
        disk.disk_name = name
        disk.path = None
        disk.instance = None
        disk.instance_uuid = None
        disk.disk_info_mapping = None
        disk.image_type = None
        disk.driver_format = 'raw'
        # Each mock has its own class, so these properties are its alone.
        type(disk).location = property(lambda d: d.path)
        type(disk).record = property(lambda d: self._record(name, d))

        disk.exists.side_effect = lambda: self._exists(name)
        disk.is_file_in_instance_path.side_effect = \
            lambda: disk.capabilities.file_in_instance_path
        disk.is_shared_block_storage.side_effect = \
            lambda: disk.capabilities.shared_storage

        def create_from_image(context, image_id, size=None, fallback=None):
            self._create(name, disk, 'image', image_id, size)
            self.image_calls.append(ImageCall(name, image_id, size,
                                              fallback))

        def create_from_func(context, func, cache_name, size=None,
                             fallback=None):
            names.check_cache_name(cache_name)
            self._create(name, disk, 'func', cache_name, size)
            self.template_calls.append(TemplateCall(name, cache_name, size,
                                                    func))

        def create_empty(like):
            if disk.capabilities.backing_in_cache:
                raise exception.NotSupported(operation='create_empty',
                                             backend=disk.image_type)
            self._create(name, disk, like.source_type, like.source_id,
                         like.virtual_size, fmt=like.format)

        def cache(fetch_func, filename, size=None, safe=False, *args,
                  **kwargs):
            names.check_cache_name(filename)
            if not self._exists(name):
                if 'image_id' in kwargs:
                    source = ('image', kwargs['image_id'])
                else:
                    source = ('func', filename)
                self._create(name, disk, *source, size)
            elif size and size > self._sizes.get(name, 0):
                self._sizes[name] = size

        def check_backing(*args, **kwargs):
            self._require(name, disk)

        def forget():
            self._present[name] = False
            for state in (self._sizes, self._created_as, self._formats,
                          self._sources):
                state.pop(name, None)

        def virtual_size():
            return self._sizes.get(name, 0)

        def resize_image(size):
            self._require(name, disk)
            current = virtual_size()
            if size < current:
                raise exception.CannotShrink(path=disk.path, current=current,
                                             size=size)
            self._sizes[name] = size

        def libvirt_info(cache_mode, extra_specs, boot_order=None,
                         disk_unit=None):
            return image_mod.file_disk_config(disk, cache_mode, extra_specs,
                                              boot_order, disk_unit)

        def libvirt_fs_info(target, driver_type=None):
            return image_mod.Image.libvirt_fs_info(disk, target, driver_type)

        def direct_snapshot(*args, **kwargs):
            raise NotImplementedError(
                f'direct_snapshot() is not implemented for {disk.image_type}')

        disk.create_from_image.side_effect = create_from_image
        disk.create_from_func.side_effect = create_from_func
        # No template either way for a fake: recorded alike.
        disk.create_from_content.side_effect = create_from_func
        disk.create_empty.side_effect = create_empty
        disk.cache.side_effect = cache
        disk.check_backing_from_image.side_effect = check_backing
        disk.check_backing_from_func.side_effect = check_backing
        disk.delete.side_effect = forget
        disk.remove_disk.side_effect = forget
        disk.virtual_size.side_effect = virtual_size
        disk.resize_image.side_effect = resize_image
        disk.libvirt_info.side_effect = libvirt_info
        disk.libvirt_fs_info.side_effect = libvirt_fs_info
        disk.direct_snapshot.side_effect = direct_snapshot
        for plain in ('create_snap', 'rollback_to_snap', 'remove_snap'):
            getattr(disk, plain).return_value = None
        return disk

    def _create(self, name: str, disk, source_type: str,
                source_id: str | None, size: int | None,
                fmt: str | None = None) -> None:
        if self._exists(name):
            raise exception.DiskExists(location=disk.path)
        self._present[name] = True
        if size is not None:
            self._sizes[name] = size
        self._created_as[name] = disk.image_type
        self._sources[name] = (source_type, source_id)
        if fmt is not None and disk.image_type != 'qcow2':
            self._formats[name] = fmt
            disk.driver_format = fmt
        if name not in self.created_disks:
            self.created_disks.append(name)

    def _require(self, name: str, disk) -> None:
        if not self._exists(name):
            raise exception.DiskNotFound(location=disk.path)

    def _record(self, name: str, disk) -> records_mod.DiskRecord | None:
        """The disk's record as the real backend would hold it."""
        if not self._exists(name) or disk.instance_uuid is None:
            return None
        backend = self._record_backend(name) or disk.image_type
        if backend in ('default', 'raw', None):
            backend = disk.image_type
        source_type, source_id = self._sources.get(name, ('none', None))
        try:
            return records_mod.DiskRecord(
                instance=disk.instance_uuid, name=name, backend=backend,
                format=disk.driver_format, location=disk.path,
                source_type=source_type, source_id=source_id,
                virtual_size=self._sizes.get(name, 0),
                state=records_mod.CREATED, provenance={'path': 'fake'})
        except exception.ImageBackendError:
            return None  # e.g. a test instance whose uuid is no name
