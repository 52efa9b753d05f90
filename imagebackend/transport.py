"""How a file under instances_path reaches this host from another host.

Hosts share the layout of instances_path (as Nova requires), so a file is
named by its path relative to instances_path. :class:`LocalTransport` maps
host names to directories on this machine, so two "hosts" can live on one
machine; an rsync-over-ssh transport implements the same protocol.
"""

from __future__ import annotations

import os
import shutil
from typing import Mapping, Protocol, runtime_checkable

from imagebackend import exception
from imagebackend import fileutils


@runtime_checkable
class Transport(Protocol):
    """Copy files between hosts by their path relative to instances_path."""

    def fetch(self, host: str, relpath: str, dst: str) -> None:
        """Copy ``relpath`` as it is on ``host`` to the local path ``dst``."""
        ...


class LocalTransport:
    """Hosts are directories (each one host's instances_path) on this machine."""

    def __init__(self, hosts: Mapping[str, str]):
        self.hosts = dict(hosts)

    def _remote(self, host: str, relpath: str) -> str:
        if host not in self.hosts:
            raise exception.TransportError(what=relpath, host=host,
                                           reason='unknown host')
        if os.path.isabs(relpath) or '..' in relpath.split(os.sep):
            raise exception.TransportError(what=relpath, host=host,
                                           reason='path escapes the host')
        return os.path.join(self.hosts[host], relpath)

    def fetch(self, host: str, relpath: str, dst: str) -> None:
        src = self._remote(host, relpath)
        if not os.path.exists(src):
            raise exception.TransportError(what=relpath, host=host,
                                           reason='no such file')
        if os.path.isdir(src):
            shutil.copytree(src, dst)
        else:
            fileutils.clone_or_sparse_copy(src, dst)
