import dataclasses
import xml.etree.ElementTree as ET

import pytest

from imagebackend import exception
from imagebackend.libvirt_config import DriveAddress, GuestDisk, GuestFilesys


def _render(obj) -> ET.Element:
    """Render through the string form, as the XML handed to libvirt is."""
    return ET.fromstring(obj.to_xml())


def _child_tags(element: ET.Element) -> list[str]:
    return [child.tag for child in element]


def _assert_round_trip(disk: GuestDisk) -> None:
    parsed = GuestDisk.parse_dom(disk.format_dom())
    assert dataclasses.asdict(parsed) == dataclasses.asdict(disk)
    # And through the serialised string, pretty and compact.
    for pretty in (True, False):
        text = disk.to_xml(pretty_print=pretty)
        assert GuestDisk.parse_dom(ET.fromstring(text)) == disk


def test_file_qcow2_disk():
    disk = GuestDisk(driver_name='qemu', driver_format='qcow2',
                     driver_cache='none', driver_discard='unmap',
                     source_path='/var/lib/nova/instances/uuid/disk',
                     target_dev='vda', target_bus='virtio', boot_order=1)
    root = _render(disk)

    assert root.tag == 'disk'
    assert root.attrib == {'type': 'file', 'device': 'disk'}
    assert _child_tags(root) == ['driver', 'source', 'target', 'boot']
    assert root.find('driver').attrib == {
        'name': 'qemu', 'type': 'qcow2', 'cache': 'none', 'discard': 'unmap'}
    assert root.find('source').attrib == {
        'file': '/var/lib/nova/instances/uuid/disk'}
    assert root.find('target').attrib == {'dev': 'vda', 'bus': 'virtio'}
    assert root.find('boot').attrib == {'order': '1'}
    _assert_round_trip(disk)


def test_block_raw_disk_with_native_io():
    disk = GuestDisk(source_type='block', driver_name='qemu',
                     driver_format='raw', driver_cache='none',
                     driver_io='native', source_path='/dev/vg/uuid_disk',
                     target_dev='vdb', target_bus='virtio')
    root = _render(disk)

    assert root.attrib == {'type': 'block', 'device': 'disk'}
    assert _child_tags(root) == ['driver', 'source', 'target']
    assert root.find('driver').attrib == {
        'name': 'qemu', 'type': 'raw', 'cache': 'none', 'io': 'native'}
    assert root.find('source').attrib == {'dev': '/dev/vg/uuid_disk'}
    _assert_round_trip(disk)


def test_network_rbd_disk_with_hosts_and_auth():
    disk = GuestDisk(source_type='network', driver_name='qemu',
                     driver_format='raw', driver_cache='writeback',
                     driver_discard='unmap', source_protocol='rbd',
                     source_name='vms/uuid_disk',
                     source_hosts=['10.0.0.1', 'mon2.example.org'],
                     source_ports=['6789', '3300'],
                     auth_username='nova', auth_secret_type='ceph',
                     auth_secret_uuid='4f2f4a5e-0a3c-4b7e-9d1a-2b6c8e0f1a2b',
                     target_dev='vda', target_bus='virtio')
    root = _render(disk)

    assert root.attrib == {'type': 'network', 'device': 'disk'}
    assert _child_tags(root) == ['driver', 'auth', 'source', 'target']
    auth = root.find('auth')
    assert auth.attrib == {'username': 'nova'}
    assert [s.attrib for s in auth] == [
        {'type': 'ceph', 'uuid': '4f2f4a5e-0a3c-4b7e-9d1a-2b6c8e0f1a2b'}]
    source = root.find('source')
    assert source.attrib == {'protocol': 'rbd', 'name': 'vms/uuid_disk'}
    assert [h.attrib for h in source] == [
        {'name': '10.0.0.1', 'port': '6789'},
        {'name': 'mon2.example.org', 'port': '3300'}]
    _assert_round_trip(disk)


def test_network_host_without_port_omits_port():
    disk = GuestDisk(source_type='network', source_protocol='rbd',
                     source_name='vms/d', source_hosts=['a', 'b'],
                     source_ports=['6789', None], target_dev='vda')
    hosts = _render(disk).find('source').findall('host')
    assert [h.attrib for h in hosts] == [{'name': 'a', 'port': '6789'},
                                         {'name': 'b'}]
    _assert_round_trip(disk)


def test_more_ports_than_hosts_is_rejected():
    disk = GuestDisk(source_type='network', source_protocol='rbd',
                     source_hosts=['a'], source_ports=['1', '2'])
    with pytest.raises(exception.InvalidInput):
        disk.format_dom()


def test_auth_nested_in_source_is_parsed():
    # libvirt >= 3.9 reports <auth> as a child of <source>.
    xml = """
    <disk type='network' device='disk'>
      <source protocol='rbd' name='vms/d'>
        <host name='10.0.0.1' port='6789'/>
        <auth username='nova'><secret type='ceph' uuid='u-1'/></auth>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>"""
    disk = GuestDisk.parse_dom(ET.fromstring(xml))
    assert (disk.auth_username, disk.auth_secret_type,
            disk.auth_secret_uuid) == ('nova', 'ceph', 'u-1')
    assert disk.source_hosts == ['10.0.0.1']
    assert disk.source_ports == ['6789']


def test_ploop_file_disk():
    disk = GuestDisk(driver_format='ploop',
                     source_path='/var/lib/nova/instances/uuid/disk',
                     target_dev='sda', target_bus='scsi')
    root = _render(disk)

    assert root.attrib == {'type': 'file', 'device': 'disk'}
    assert root.find('driver').attrib == {'type': 'ploop'}
    assert root.find('source').attrib == {
        'file': '/var/lib/nova/instances/uuid/disk'}
    assert root.find('target').attrib == {'dev': 'sda', 'bus': 'scsi'}
    _assert_round_trip(disk)


def test_scsi_disk_with_drive_address():
    disk = GuestDisk(driver_name='qemu', driver_format='raw',
                     source_path='/images/config', source_device='lun',
                     target_dev='sdb', target_bus='scsi', readonly=True,
                     serial='vol-serial-1',
                     device_addr=DriveAddress(controller=0, bus=0, target=0,
                                              unit=3))
    root = _render(disk)

    assert root.attrib == {'type': 'file', 'device': 'lun'}
    assert _child_tags(root) == ['driver', 'source', 'target', 'readonly',
                                 'serial', 'address']
    assert root.find('readonly').attrib == {}
    assert root.findtext('serial') == 'vol-serial-1'
    assert root.find('address').attrib == {
        'type': 'drive', 'controller': '0', 'bus': '0', 'target': '0',
        'unit': '3'}
    _assert_round_trip(disk)


def test_qos_iotune():
    disk = GuestDisk(driver_name='qemu', driver_format='qcow2',
                     source_path='/d', target_dev='vda', target_bus='virtio',
                     boot_order=2,
                     disk_read_bytes_sec=10485760, disk_read_iops_sec=500,
                     disk_write_bytes_sec=5242880, disk_write_iops_sec=250,
                     disk_total_bytes_sec=15728640, disk_total_iops_sec=750)
    root = _render(disk)

    assert _child_tags(root) == ['driver', 'source', 'target', 'iotune',
                                 'boot']
    iotune = root.find('iotune')
    assert {c.tag: c.text for c in iotune} == {
        'total_bytes_sec': '15728640', 'read_bytes_sec': '10485760',
        'write_bytes_sec': '5242880', 'total_iops_sec': '750',
        'read_iops_sec': '500', 'write_iops_sec': '250'}
    assert _child_tags(iotune)[0] == 'total_bytes_sec'
    _assert_round_trip(disk)


def test_partial_iotune_only_writes_set_limits():
    disk = GuestDisk(source_path='/d', target_dev='vda',
                     disk_total_iops_sec=100)
    iotune = _render(disk).find('iotune')
    assert {c.tag: c.text for c in iotune} == {'total_iops_sec': '100'}
    _assert_round_trip(disk)


def test_full_element_order():
    disk = GuestDisk(source_type='network', driver_name='qemu',
                     source_protocol='rbd', source_name='p/v',
                     source_hosts=['h'], source_ports=['1'],
                     auth_username='u', auth_secret_type='ceph',
                     auth_secret_uuid='x', target_dev='sda',
                     target_bus='scsi', disk_read_iops_sec=1, boot_order=1,
                     readonly=True, serial='s', device_addr=DriveAddress())
    assert _child_tags(disk.format_dom()) == [
        'driver', 'auth', 'source', 'target', 'iotune', 'boot', 'readonly',
        'serial', 'address']
    _assert_round_trip(disk)


def test_none_attributes_are_omitted():
    root = GuestDisk(source_device='cdrom', target_dev='hdc').format_dom()
    assert _child_tags(root) == ['target']
    assert root.find('target').attrib == {'dev': 'hdc'}
    _assert_round_trip(GuestDisk(source_device='cdrom', target_dev='hdc'))


def test_compact_xml_has_no_whitespace():
    disk = GuestDisk(driver_format='raw', source_path='/d', target_dev='vda')
    assert disk.to_xml(pretty_print=False) == (
        '<disk type="file" device="disk"><driver type="raw" />'
        '<source file="/d" /><target dev="vda" /></disk>')
    assert '\n' in disk.to_xml()


def test_unknown_disk_source_type_is_rejected():
    with pytest.raises(exception.InvalidInput):
        GuestDisk(source_type='mount', source_path='/d').format_dom()


def test_non_drive_address_is_ignored_on_parse():
    xml = """
    <disk type='file' device='disk'>
      <source file='/d'/><target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04'
               function='0x0'/>
    </disk>"""
    assert GuestDisk.parse_dom(ET.fromstring(xml)).device_addr is None


def test_filesys_file_with_loop_driver():
    fs = GuestFilesys(source_type='file', driver_type='loop',
                      driver_format='raw',
                      source_file='/var/lib/nova/instances/uuid/disk',
                      target_dir='/')
    root = _render(fs)

    assert root.tag == 'filesystem'
    assert root.attrib == {'type': 'file'}
    assert _child_tags(root) == ['driver', 'source', 'target']
    assert root.find('driver').attrib == {'type': 'loop', 'format': 'raw'}
    assert root.find('source').attrib == {
        'file': '/var/lib/nova/instances/uuid/disk'}
    assert root.find('target').attrib == {'dir': '/'}
    assert GuestFilesys.parse_dom(root) == fs


def test_filesys_block():
    fs = GuestFilesys(source_type='block', source_dev='/dev/vg/uuid_disk',
                      target_dir='/')
    root = _render(fs)

    assert root.attrib == {'type': 'block'}
    assert _child_tags(root) == ['source', 'target']
    assert root.find('source').attrib == {'dev': '/dev/vg/uuid_disk'}
    assert root.find('target').attrib == {'dir': '/'}
    assert GuestFilesys.parse_dom(root) == fs


def test_filesys_unknown_source_type_is_rejected():
    with pytest.raises(exception.InvalidInput):
        GuestFilesys(source_type='mount').format_dom()
