"""Nova's Glance client, stubbed on a Nova test case: one image, served
from a local file (Nova's driver downloads it; nothing else of Glance).

Shared by the nova_driver suite's child (:mod:`benchmarks.nova_driver_child`)
and the Nova driver scenarios (tests/nova/nova_driver_scenarios.py); runs
in .venv-nova.
"""

from __future__ import annotations

import copy
import os
import shutil

MiB = 1024 * 1024


def stub_glance(case, image_id: str, image: str, name: str,
                virtual_size: int) -> None:
    """Make ``case`` (a ``nova.test.TestCase``) serve the qcow2 file
    ``image`` as Glance image ``image_id``; any other id is not found."""
    from nova import exception

    meta = {'id': image_id, 'name': name, 'status': 'active',
            'disk_format': 'qcow2', 'container_format': 'bare',
            'size': os.path.getsize(image), 'virtual_size': virtual_size,
            'min_disk': 0, 'min_ram': 0, 'properties': {}, 'locations': [],
            'owner': 'fake'}

    def get(api, context, requested, include_locations=False,
            show_deleted=True):
        if requested != image_id:
            raise exception.ImageNotFound(image_id=requested)
        return copy.deepcopy(meta)

    def download(api, context, requested, data=None, dest_path=None,
                 trusted_certs=None):
        if requested != image_id:
            raise exception.ImageNotFound(image_id=requested)
        if dest_path:
            shutil.copyfile(image, dest_path)
            return None
        with open(image, 'rb') as f:
            chunks = iter(lambda: f.read(MiB), b'')
            if data is None:
                return list(chunks)
            for chunk in chunks:
                data.write(chunk)
        return None

    case.stub_out('nova.image.glance.API.get', get)
    case.stub_out('nova.image.glance.API.download', download)
