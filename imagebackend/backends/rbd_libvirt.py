"""Rbd disks as libvirt and tools outside the guest reach them.

``libvirt_info`` renders a network ``<disk>`` (protocol rbd, the monitors
from the cluster's monmap, read in-process by ``mon_addrs``: Nova ran
``ceph mon dump``); ``get_model`` describes the volume for a tool outside
the guest (libguestfs).

``<auth>`` is written only with ``rbd_secret_uuid`` (username from
``rbd_user``): Nova also set the secret type for ``rbd_user`` alone, but
libvirt cannot authenticate without a secret's uuid.
"""

from __future__ import annotations

import base64
import json

from imagebackend import exception
from imagebackend import libvirt_config
from imagebackend import models
from imagebackend.backends.ceph_connection import RbdError


class RbdLibvirt:
    """An Rbd disk's network ``<disk>``, its model and its cluster's
    monitors (a part of :class:`~imagebackend.backends.rbd.Rbd`)."""

    def mon_addrs(self) -> tuple[list[str], list[str]]:
        """(hosts, ports) of the cluster's monitors, from its monmap (read
        in-process: Nova ran ``ceph mon dump --format=json``)."""
        with self._connect() as conn:
            ret, out, err = conn.client.mon_command(
                json.dumps({'prefix': 'mon dump', 'format': 'json'}), b'',
                timeout=self.connect_timeout)
        if ret != 0:
            raise RbdError(operation='mon dump', target='the cluster',
                           reason=err or f'error {ret}')
        return monitors(json.loads(out))

    def libvirt_info(self, cache_mode: str | None, extra_specs: dict,
                     boot_order: int | None = None,
                     disk_unit: int | None = None
                     ) -> libvirt_config.GuestDisk:
        mapping = self.disk_info_mapping
        if not mapping:
            raise exception.InvalidInput(
                reason='libvirt_info needs the disk_info_mapping')
        hosts, ports = self.driver.get_mon_addrs()   # Nova's call
        info = libvirt_config.GuestDisk(
            source_type='network', source_device=mapping.get('type', 'disk'),
            source_protocol='rbd', source_name=self.location,
            source_hosts=hosts, source_ports=ports,
            target_bus=mapping['bus'], target_dev=mapping['dev'],
            driver_cache=cache_mode, driver_discard=self.discard_mode,
            driver_format='raw', boot_order=boot_order)
        secret = self.conf.libvirt.rbd_secret_uuid
        if secret:
            # Nova: the username goes with the secret; libvirt needs both.
            info.auth_secret_type = 'ceph'
            info.auth_secret_uuid = secret
            info.auth_username = self.rbd_user
        self._disk_scsi(info, disk_unit)
        self._disk_qos(info, extra_specs)
        return info

    def get_model(self, connection) -> models.RBDImage:
        """The volume as a tool outside the guest reaches it (Nova's
        ``get_model``): name, pool and user; the Ceph key of libvirt's
        secret ``[libvirt] rbd_secret_uuid``, read through ``connection``
        (a libvirt connection) and base64-encoded, or None without one;
        the monitors as ``host:port``, an IPv6 host in brackets (libguestfs
        parses the joined string)."""
        password = None
        uuid = self.conf.libvirt.rbd_secret_uuid
        if uuid:
            secret = connection.secretLookupByUUIDString(uuid)
            password = base64.b64encode(secret.value())
        hosts, ports = self.mon_addrs()
        servers = [f'[{host}]:{port}' if ':' in host else f'{host}:{port}'
                   for host, port in zip(hosts, ports)]
        return models.RBDImage(self.rbd_name, self.pool, self.rbd_user,
                               password, servers)


def monitors(monmap: dict) -> tuple[list[str], list[str]]:
    """(hosts, ports) of the monitors in a ``mon dump`` JSON document.

    Nova's parsing: each monitor's legacy ``addr`` (``host:port/nonce``,
    the msgr1 address that qemu's librbd is given), brackets stripped
    from IPv6 hosts. A monitor without one falls back to the first of its
    ``public_addrs``.
    """
    hosts, ports = [], []
    for mon in monmap.get('mons', []):
        addr = mon.get('addr') or ''
        if not addr or addr.startswith('0.0.0.0') or addr == '-':
            vec = (mon.get('public_addrs') or {}).get('addrvec') or []
            v1 = [a for a in vec if a.get('type') == 'v1'] or vec
            if not v1:
                continue
            addr = v1[0]['addr']
        host_port = addr.rsplit('/', 1)[0]
        host, port = host_port.rsplit(':', 1)
        hosts.append(host.strip('[]'))
        ports.append(port)
    return hosts, ports
