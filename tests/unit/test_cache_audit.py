"""Pure logic of the cache audit and clean."""

import argparse

import pytest

from imagebackend import cache_audit

from driver import host_cache


def test_status_is_the_worst_problem():
    entry = cache_audit.EntryAudit(name='x', path='/x')
    assert entry.status == cache_audit.OK and not entry.flagged
    entry.problems.append(cache_audit.Problem(cache_audit.UNVERIFIED,
                                              'no-sidecar', ''))
    assert entry.status == cache_audit.UNVERIFIED and entry.flagged
    entry.problems.append(cache_audit.Problem(cache_audit.HOSTILE, 'unsafe',
                                              ''))
    entry.problems.append(cache_audit.Problem(cache_audit.MODIFIED,
                                              'digest-mismatch', ''))
    assert entry.status == cache_audit.HOSTILE
    assert entry.to_dict()['status'] == 'hostile'


def test_disk_files_are_nova_disk_names(tmp_path):
    for name in ('disk', 'disk.local', 'disk.eph0', 'disk.swap',
                 'disk.config', 'disk.rescue', 'kernel', 'ramdisk',
                 'disk.info', 'disk.info.tmp', 'disks.json', 'console.log',
                 'libvirt.xml', 'disk.part', 'disk.fallocate_test'):
        (tmp_path / name).write_bytes(b'')
    assert cache_audit._disk_files(str(tmp_path)) == [
        'disk', 'disk.config', 'disk.eph0', 'disk.local', 'disk.rescue',
        'disk.swap', 'kernel', 'ramdisk']


@pytest.mark.parametrize('parse, good, bad', [
    (host_cache._seconds, ('0', '3600', '1.5'), ('-1', 'x'))])
def test_cli_numbers(parse, good, bad):
    for text in good:
        assert parse(text) == float(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
