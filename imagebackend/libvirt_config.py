"""Libvirt ``<disk>`` and ``<filesystem>`` elements for image backends.

This is the subset of Nova's ``LibvirtConfigGuestDisk`` and
``LibvirtConfigGuestFilesys`` that ``libvirt_info()`` / ``libvirt_fs_info()``
use, built on the standard library's ElementTree so it needs neither lxml
nor the libvirt bindings. Attribute names match Nova's so backend code ports
over unchanged.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

from imagebackend import exception

# <iotune> children in the order libvirt writes them, each paired with the
# GuestDisk attribute (named after the flavor's quota:disk_* extra spec).
_IOTUNE = (
    ('total_bytes_sec', 'disk_total_bytes_sec'),
    ('read_bytes_sec', 'disk_read_bytes_sec'),
    ('write_bytes_sec', 'disk_write_bytes_sec'),
    ('total_iops_sec', 'disk_total_iops_sec'),
    ('read_iops_sec', 'disk_read_iops_sec'),
    ('write_iops_sec', 'disk_write_iops_sec'),
)


def _element(tag: str, **attrs: object) -> ET.Element:
    """An element carrying only the attributes that are not None."""
    return ET.Element(tag, {k: str(v) for k, v in attrs.items()
                            if v is not None})


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _to_xml(element: ET.Element, pretty_print: bool) -> str:
    if pretty_print:
        ET.indent(element)
    return ET.tostring(element, encoding='unicode')


def _check_source_type(kind: str, source_type: str,
                       allowed: tuple[str, ...]) -> None:
    # Fail here rather than hand libvirt a <source> it will reject later with
    # a far less specific message.
    if source_type not in allowed:
        raise exception.InvalidInput(
            reason=f'{kind} source_type {source_type!r} is not one of '
                   f'{", ".join(allowed)}')


@dataclasses.dataclass
class DriveAddress:
    """A ``<address type='drive'>`` placing a disk on a SCSI/IDE controller."""

    controller: int = 0
    bus: int = 0
    target: int = 0
    unit: int = 0

    def format_dom(self) -> ET.Element:
        return _element('address', type='drive', controller=self.controller,
                        bus=self.bus, target=self.target, unit=self.unit)

    @classmethod
    def parse_dom(cls, element: ET.Element) -> DriveAddress:
        return cls(**{f.name: int(element.get(f.name, 0))
                      for f in dataclasses.fields(cls)})


@dataclasses.dataclass
class GuestDisk:
    """A guest ``<disk>`` element as an image backend describes it.

    ``source_type`` selects how ``source_path`` is written: ``file`` gives
    ``<source file=>``, ``block`` gives ``<source dev=>``. A ``network`` disk
    uses ``source_protocol``/``source_name`` and one ``<host>`` per entry of
    ``source_hosts``, paired by position with ``source_ports`` (a missing or
    None port leaves the ``port`` attribute out). Attributes left as None are
    omitted from the XML. Pass values by keyword: the field order is not part
    of the API.
    """

    source_type: str = 'file'
    source_device: str = 'disk'
    driver_name: str | None = None
    driver_format: str | None = None
    driver_cache: str | None = None
    driver_discard: str | None = None
    driver_io: str | None = None
    source_path: str | None = None
    source_protocol: str | None = None
    source_name: str | None = None
    source_hosts: list[str] = dataclasses.field(default_factory=list)
    source_ports: list[str | None] = dataclasses.field(default_factory=list)
    auth_username: str | None = None
    auth_secret_type: str | None = None
    auth_secret_uuid: str | None = None
    target_dev: str | None = None
    target_bus: str | None = None
    boot_order: int | None = None
    readonly: bool = False
    serial: str | None = None
    device_addr: DriveAddress | None = None
    disk_read_bytes_sec: int | None = None
    disk_read_iops_sec: int | None = None
    disk_write_bytes_sec: int | None = None
    disk_write_iops_sec: int | None = None
    disk_total_bytes_sec: int | None = None
    disk_total_iops_sec: int | None = None

    _SOURCE_TYPES = ('file', 'block', 'network')

    def format_dom(self) -> ET.Element:
        _check_source_type('disk', self.source_type, self._SOURCE_TYPES)
        disk = _element('disk', type=self.source_type,
                        device=self.source_device)

        driver = _element('driver', name=self.driver_name,
                          type=self.driver_format, cache=self.driver_cache,
                          discard=self.driver_discard, io=self.driver_io)
        if driver.attrib:
            disk.append(driver)

        auth = _element('auth', username=self.auth_username)
        secret = _element('secret', type=self.auth_secret_type,
                          uuid=self.auth_secret_uuid)
        if secret.attrib:
            auth.append(secret)
        if auth.attrib or len(auth):
            disk.append(auth)

        disk.extend(self._format_source())

        target = _element('target', dev=self.target_dev, bus=self.target_bus)
        if target.attrib:
            disk.append(target)

        iotune = ET.Element('iotune')
        for tag, attr in _IOTUNE:
            value = getattr(self, attr)
            if value is not None:
                ET.SubElement(iotune, tag).text = str(value)
        if len(iotune):
            disk.append(iotune)

        if self.boot_order is not None:
            disk.append(_element('boot', order=self.boot_order))
        if self.readonly:
            ET.SubElement(disk, 'readonly')
        if self.serial is not None:
            ET.SubElement(disk, 'serial').text = self.serial
        if self.device_addr is not None:
            disk.append(self.device_addr.format_dom())
        return disk

    def _format_source(self) -> list[ET.Element]:
        if self.source_type == 'file':
            source = _element('source', file=self.source_path)
        elif self.source_type == 'block':
            source = _element('source', dev=self.source_path)
        else:
            source = _element('source', protocol=self.source_protocol,
                              name=self.source_name)
            if len(self.source_ports) > len(self.source_hosts):
                raise exception.InvalidInput(
                    reason=f'{len(self.source_ports)} source_ports for '
                           f'{len(self.source_hosts)} source_hosts')
            for i, host in enumerate(self.source_hosts):
                port = (self.source_ports[i]
                        if i < len(self.source_ports) else None)
                source.append(_element('host', name=host, port=port))
        # An empty cdrom/floppy drive has no <source> at all.
        return [source] if source.attrib or len(source) else []

    def to_xml(self, pretty_print: bool = True) -> str:
        return _to_xml(self.format_dom(), pretty_print)

    @classmethod
    def parse_dom(cls, element: ET.Element) -> GuestDisk:
        """Read a ``<disk>`` element, e.g. one taken from a domain's XML.

        Ports are returned as strings (XML has no types) and ``source_ports``
        always has one entry per host. Only ``type='drive'`` addresses are
        kept; libvirt's PCI addresses for virtio disks are not ours to set.
        """
        disk = cls(source_type=element.get('type', 'file'),
                   source_device=element.get('device', 'disk'))

        driver = element.find('driver')
        if driver is not None:
            disk.driver_name = driver.get('name')
            disk.driver_format = driver.get('type')
            disk.driver_cache = driver.get('cache')
            disk.driver_discard = driver.get('discard')
            disk.driver_io = driver.get('io')

        source = element.find('source')
        if source is not None:
            if disk.source_type == 'file':
                disk.source_path = source.get('file')
            elif disk.source_type == 'block':
                disk.source_path = source.get('dev')
            elif disk.source_type == 'network':
                disk.source_protocol = source.get('protocol')
                disk.source_name = source.get('name')
                for host in source.findall('host'):
                    disk.source_hosts.append(host.get('name'))
                    disk.source_ports.append(host.get('port'))

        # libvirt >= 3.9 writes <auth> inside <source>; older ones (and the
        # XML we produce) put it directly under <disk>.
        auth = element.find('auth')
        if auth is None and source is not None:
            auth = source.find('auth')
        if auth is not None:
            disk.auth_username = auth.get('username')
            secret = auth.find('secret')
            if secret is not None:
                disk.auth_secret_type = secret.get('type')
                disk.auth_secret_uuid = secret.get('uuid')

        target = element.find('target')
        if target is not None:
            disk.target_dev = target.get('dev')
            disk.target_bus = target.get('bus')

        iotune = element.find('iotune')
        if iotune is not None:
            for tag, attr in _IOTUNE:
                setattr(disk, attr, _int(iotune.findtext(tag)))

        boot = element.find('boot')
        if boot is not None:
            disk.boot_order = _int(boot.get('order'))
        disk.readonly = element.find('readonly') is not None
        disk.serial = element.findtext('serial')

        address = element.find('address')
        if address is not None and address.get('type') == 'drive':
            disk.device_addr = DriveAddress.parse_dom(address)
        return disk


@dataclasses.dataclass
class GuestFilesys:
    """A guest ``<filesystem>`` element backed by an image (LXC guests).

    ``source_type`` is ``file`` (an image file, with ``source_file``; usually
    ``driver_type='loop'`` or ``'nbd'``) or ``block`` (a host device, with
    ``source_dev``).
    """

    source_type: str = 'file'
    source_file: str | None = None
    source_dev: str | None = None
    driver_type: str | None = None
    driver_format: str | None = None
    target_dir: str = '/'

    _SOURCE_TYPES = ('file', 'block')

    def format_dom(self) -> ET.Element:
        _check_source_type('filesystem', self.source_type,
                           self._SOURCE_TYPES)
        fs = _element('filesystem', type=self.source_type)
        driver = _element('driver', type=self.driver_type,
                          format=self.driver_format)
        if driver.attrib:
            fs.append(driver)
        if self.source_type == 'file':
            fs.append(_element('source', file=self.source_file))
        else:
            fs.append(_element('source', dev=self.source_dev))
        fs.append(_element('target', dir=self.target_dir))
        return fs

    def to_xml(self, pretty_print: bool = True) -> str:
        return _to_xml(self.format_dom(), pretty_print)

    @classmethod
    def parse_dom(cls, element: ET.Element) -> GuestFilesys:
        fs = cls(source_type=element.get('type', 'file'))
        driver = element.find('driver')
        if driver is not None:
            fs.driver_type = driver.get('type')
            fs.driver_format = driver.get('format')
        source = element.find('source')
        if source is not None:
            fs.source_file = source.get('file')
            fs.source_dev = source.get('dev')
        target = element.find('target')
        if target is not None:
            fs.target_dir = target.get('dir')
        return fs
