"""What a disk is, for a tool that opens it outside the guest.

``Image.get_model(connection)`` answers with one of these: a local file in
a format, a local block device, or an RBD volume with what it takes to
reach it. They mirror ``nova.virt.image.model`` field for field (same
class names, same attribute names, same format constants), so a caller
that needs Nova's objects (file injection, LXC through libguestfs) builds
them from these by attribute name; the library itself never imports Nova.
"""

from __future__ import annotations

from typing import Any

from imagebackend import exception

FORMAT_RAW = 'raw'
FORMAT_QCOW2 = 'qcow2'
FORMAT_PLOOP = 'ploop'

ALL_FORMATS = (FORMAT_RAW, FORMAT_QCOW2, FORMAT_PLOOP)


class Image:
    """A disk in one of :data:`ALL_FORMATS` (Nova's ``Image``)."""

    def __init__(self, format: str):
        if format not in ALL_FORMATS:
            raise exception.InvalidInput(
                reason=f'no image model for format {format!r} (known: '
                       f'{", ".join(ALL_FORMATS)})')
        self.format = format

    def fields(self) -> dict[str, Any]:
        """The attributes, by Nova's names (what a converter copies)."""
        return dict(vars(self))

    def __repr__(self) -> str:
        shown = dict(vars(self))
        if shown.get('password') is not None:
            shown['password'] = '***'  # a Ceph key is not for logs
        return f'<{type(self).__name__}:{shown}>'

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(str(vars(self)))


class LocalImage(Image):
    """A disk at a path on this host."""

    def __init__(self, path: str, format: str):
        super().__init__(format)
        self.path = path


class LocalFileImage(LocalImage):
    """A disk that is a file (or, for ploop, a directory) on this host."""


class LocalBlockImage(LocalImage):
    """A disk that is a block device on this host: always raw."""

    def __init__(self, path: str):
        super().__init__(path, FORMAT_RAW)


class RBDImage(Image):
    """A volume in a Ceph pool: ``servers`` are ``host:port`` strings
    (IPv6 hosts in brackets, as libguestfs wants them); ``password`` is the
    base64-encoded Ceph key (bytes, as Nova passes it), or None."""

    def __init__(self, name: str, pool: str, user: str | None,
                 password: bytes | None, servers: list[str]):
        super().__init__(FORMAT_RAW)
        self.name = name
        self.pool = pool
        self.user = user
        self.password = password
        self.servers = servers
