"""One exception hierarchy for everything the library raises on purpose.

Callers catch :class:`ImageBackendError` to handle any of them; each subclass
carries a message built from keyword arguments so the text is always complete.
"""

from __future__ import annotations


class ImageBackendError(Exception):
    """Base class of every error raised by imagebackend."""

    msg_fmt = "An unknown imagebackend error occurred."

    def __init__(self, message: str | None = None, **kwargs):
        self.kwargs = kwargs
        if message is None:
            try:
                message = self.msg_fmt % kwargs
            except (KeyError, TypeError):
                message = self.msg_fmt
        self.message = message
        super().__init__(message)


class InvalidInput(ImageBackendError):
    msg_fmt = "Invalid input: %(reason)s"


class InvalidDiskName(InvalidInput):
    msg_fmt = "Invalid disk or cache name %(name)r: %(reason)s"


class InvalidOverlay(InvalidInput):
    """A qcow2 overlay the in-process writer does not make (size, backing
    name or format out of its range); nothing was written."""

    msg_fmt = "Cannot write this qcow2 overlay: %(reason)s"


class UnknownBackend(InvalidInput):
    msg_fmt = "Unknown image type %(image_type)r (known: %(known)s)"


class InvalidConfig(InvalidInput):
    msg_fmt = "Invalid configuration: %(reason)s"


class BackendUnavailable(ImageBackendError):
    msg_fmt = "Backend %(image_type)r is not available on this host: %(reason)s"


class ImageNotFound(ImageBackendError):
    msg_fmt = "Image %(image_id)s could not be found."


class ImageUnacceptable(ImageBackendError):
    msg_fmt = "Image %(image_id)s is unacceptable: %(reason)s"


class DiskTooSmall(ImageBackendError):
    """The requested disk size is smaller than the image it is made from."""

    msg_fmt = ("Requested disk size %(size)d bytes is smaller than the image's "
               "virtual size %(image_size)d bytes.")


class CannotShrink(ImageBackendError):
    msg_fmt = ("Disk %(path)s is %(current)d bytes; refusing to shrink it to "
               "%(size)d bytes.")


class DiskNotFound(ImageBackendError):
    msg_fmt = "No disk found at %(location)s."


class DiskExists(ImageBackendError):
    msg_fmt = "Disk %(location)s already exists."


class NothingMade(ImageBackendError):
    """A caller's fetch or template function (Nova's ``prepare_template``)
    returned without writing the file it was asked for."""

    msg_fmt = ("%(function)s returned without making %(path)s: there is "
               "nothing to make the disk from.")


class RecordNotFound(ImageBackendError):
    msg_fmt = ("No metadata record for disk %(disk_name)s of instance "
               "%(instance)s.")


class IncompleteDisk(ImageBackendError):
    """A record says the disk is still being created (or its creation died)."""

    msg_fmt = ("Disk %(disk_name)s of instance %(instance)s is marked "
               "%(state)r, not created; it is not a usable disk.")


class CorruptRecord(ImageBackendError):
    msg_fmt = "Metadata at %(location)s cannot be used: %(reason)s"


class ProcessError(ImageBackendError):
    """A command run through the process runner failed."""

    msg_fmt = ("Command %(cmd)s failed with exit code %(exit_code)s.\n"
               "stdout: %(stdout)s\nstderr: %(stderr)s")

    def __init__(self, message: str | None = None, *, cmd='', exit_code=None,
                 stdout='', stderr='', **kwargs):
        self.cmd = cmd
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(message, cmd=cmd, exit_code=exit_code,
                         stdout=stdout, stderr=stderr, **kwargs)


class NotSupported(ImageBackendError):
    msg_fmt = "%(operation)s is not supported by the %(backend)s backend."


class TransportError(ImageBackendError):
    msg_fmt = "Could not copy %(what)s to or from host %(host)s: %(reason)s"


class NoSpace(ImageBackendError):
    """A write failed because its storage is full (ENOSPC) or over quota
    (EDQUOT). What the failed call was making has been removed again."""

    msg_fmt = "No space left writing %(what)s: %(reason)s"


class ProcessNoSpace(NoSpace, ProcessError):
    """A command run through the process runner reported no space; still a
    :class:`ProcessError` for callers that handle command failures."""

    msg_fmt = ("Command %(cmd)s ran out of space (exit code %(exit_code)s)."
               "\nstdout: %(stdout)s\nstderr: %(stderr)s")


class UnrecordedDisk(RecordNotFound):
    """Storage of an instance that no record describes: it is not deleted
    (nor adopted) by a caller that only knows what records say."""

    msg_fmt = ("%(location)s of instance %(instance)s is described by no "
               "disk record; refusing to %(action)s it.")


class CorruptCacheEntry(ImageBackendError):
    """A cache entry whose sidecar or data cannot be trusted: never used
    for a new disk, never silently rebuilt from its current bytes."""

    msg_fmt = ("Cache entry %(name)s (%(path)s) cannot be trusted: "
               "%(reason)s")


class ImageTooLarge(ImageUnacceptable):
    """An image declares a virtual size over the configured ceiling."""

    msg_fmt = ("Image %(image_id)s is unacceptable: its virtual size "
               "%(virtual_size)d bytes exceeds the limit of %(limit)d bytes "
               "([imagebackend] max_image_virtual_size_gb).")


class EncryptionError(ImageBackendError):
    """Ephemeral storage encryption is required of a disk and cannot be
    honoured. Nothing is made, and no disk is used unencrypted."""

    msg_fmt = "Disk %(disk)s cannot be encrypted: %(reason)s"


class EncryptionUnsupported(EncryptionError):
    """Encryption is required ([ephemeral_storage_encryption] enabled, or
    the instance has an ephemeral key) on a backend that cannot encrypt
    (Nova's Image raises InternalError for it)."""

    msg_fmt = ("Ephemeral storage encryption is required (%(why)s), but the "
               "%(backend)s backend cannot encrypt disk %(disk)s: only "
               "backends declaring the encryption capability (lvm) can.")


class EncryptionKeyUnavailable(EncryptionError):
    """The key of a disk to encrypt cannot be had: no request context, no
    key manager, no key reference, or the key manager failed."""

    msg_fmt = ("The encryption key %(key_uuid)s of disk %(disk)s cannot be "
               "had: %(reason)s")


class UnencryptedDisk(EncryptionError):
    """An existing disk whose record says it is not encrypted, opened
    where encryption is required: it is not used as if it were."""

    msg_fmt = ("Disk %(disk)s is recorded as not encrypted, but encryption "
               "is required (%(why)s); refusing to use it.")


class CacheCleanRefused(ImageBackendError):
    """The image cache is not cleaned while disks it may back are not
    described by records: whether they use a base cannot be known."""

    msg_fmt = ("Refusing to clean the image cache: these disks are "
               "described by no record, so the bases they use are not "
               "known: %(disks)s. Run `imagebackend adopt --all` first.")
