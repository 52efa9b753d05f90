"""Backend.adoption_record: the record a disk made before records would be
adopted with, decided without writing anything (the CLI's ``adopt
--dry-run`` and its checks run between the decision and the write).
Pure logic: qemu-img is faked as in test_backend."""

import json
import os
from unittest import mock

import imagebackend
from imagebackend import names
from tests.hosts import GiB


def test_adoption_record_writes_nothing(backend, host, instance):
    d = os.path.join(host.instances_path, instance.uuid)
    os.makedirs(d)
    path = os.path.join(d, 'disk')
    with open(path, 'wb') as f:
        f.write(b'\0' * 4096)
    with open(os.path.join(d, 'disk.info'), 'w') as f:
        f.write(json.dumps({path: 'raw'}))
    before = sorted(os.listdir(d))
    with mock.patch.object(imagebackend.qemu, 'info',
                           return_value={'virtual-size': GiB}):
        record = backend.adoption_record(instance, 'disk')
    assert (record.backend, record.format, record.virtual_size) == \
        ('flat', 'raw', GiB)
    assert record.provenance == {'path': 'adopted', 'from': 'disk.info'}
    assert sorted(os.listdir(d)) == before
    assert backend.records.get(instance.uuid, 'disk') is None

    backend.save_adopted(instance, record)
    assert backend.records.get(instance.uuid, 'disk') == record
    assert names.RECORDS_FILE in os.listdir(d)
