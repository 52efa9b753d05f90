"""Spawn one instance's root, ephemeral and swap disks, and show them.

The embedded default: images are files in a folder, disks are local files,
Qcow2 overlays on a shared cache. The sample image is made with qemu-img on
first run; every run spawns a new instance and reuses the cache, so the
second run shows the cheap path (one qemu-img create per disk).

    python examples/spawn_demo.py [--state-dir DIR] [--backend flat|qcow2]
                                  [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid

from oslo_config import cfg
from oslo_utils import units

import imagebackend
from imagebackend import fileutils
from imagebackend import names
from imagebackend import processes

IMAGE_ID = 'demo-image'


class Instance:
    def __init__(self):
        self.uuid = str(uuid.uuid4())
        self.name = 'demo'
        self.os_type = 'linux'


def make_sample_image(images_dir: str) -> str:
    """A 256 MiB qcow2 image with a little data in it."""
    path = os.path.join(images_dir, f'{IMAGE_ID}.qcow2')
    if not os.path.exists(path):
        os.makedirs(images_dir, exist_ok=True)
        tmp = path + '.tmp'
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', tmp,
                        str(256 * units.Mi)], check=True)
        subprocess.run(['qemu-io', '-f', 'qcow2', '-c',
                        'write -P 0xab 0 4M', tmp], check=True,
                       stdout=subprocess.DEVNULL)
        os.rename(tmp, path)
    return path


def ephemeral(label: str, size: int):
    def func(target: str) -> None:
        processes.execute('truncate', '-s', str(size), target)
        processes.execute('mkfs', '-t', 'ext4', '-F', '-q', '-L', label,
                          target)
    return func


def swap(size: int):
    def func(target: str) -> None:
        processes.execute('truncate', '-s', str(size), target)
        processes.execute('mkswap', target)
    return func


def human(n: int | None) -> str:
    if n is None:
        return '-'
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if n < 1024 or unit == 'TiB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--state-dir', default=os.environ.get(
        'IMAGEBACKEND_STATE_DIR', '/var/tmp/imagebackend-demo'),
        help='where images and the host\'s instances_path live '
             '(default: %(default)s)')
    parser.add_argument('--backend', default='qcow2',
                        choices=['flat', 'qcow2'])
    parser.add_argument('--json', action='store_true',
                        help='print the disks\' records as JSON')
    args = parser.parse_args(argv)

    conf = cfg.ConfigOpts()
    imagebackend.config.register_opts(conf)
    conf.set_override('instances_path',
                      os.path.join(args.state_dir, 'host-a', 'instances'))
    conf.set_override('images_dir', os.path.join(args.state_dir, 'images'),
                      group='imagebackend')
    conf([])
    make_sample_image(conf.imagebackend.images_dir)
    backend = imagebackend.Backend(conf=conf)
    instance = Instance()

    eph_size, swap_size, root_size = 512 * units.Mi, 128 * units.Mi, units.Gi
    plan = [
        ('disk', lambda d: d.create_from_image(None, IMAGE_ID, root_size)),
        ('disk.local', lambda d: d.create_from_func(
            None, ephemeral('ephemeral0', eph_size), names.template_name(
                'ephemeral', eph_size, fs='ext4', label='ephemeral0'),
            eph_size)),
        ('disk.swap', lambda d: d.create_from_func(
            None, swap(swap_size), names.template_name('swap', swap_size),
            swap_size)),
    ]
    timings = {}
    with processes.recording() as commands:
        for disk_name, create in plan:
            start = time.monotonic()
            before = len(commands)
            create(backend.by_name(instance, disk_name, args.backend))
            timings[disk_name] = (time.monotonic() - start,
                                  len(commands) - before)

    records = backend.records.list(instance.uuid)
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=1))
        return 0
    print(f'Spawned instance {instance.uuid} on {args.backend} '
          f'in {conf.instances_path}')
    header = ('disk', 'backend', 'format', 'size', 'allocated', 'backing',
              'commands', 'ms')
    rows = [header]
    for r in records:
        seconds, n = timings[r.name]
        rows.append((r.name, r.backend, r.format, human(r.virtual_size),
                     human(fileutils.allocated_bytes(r.location)),
                     r.backing or '-', str(n), f'{seconds * 1000:.0f}'))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print('  '.join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    print(f'\nImage cache ({backend.image_cache.base_dir}):')
    for e in backend.image_cache.entries():
        print(f'  {e.name}  {e.kind}  {e.format}  {human(e.virtual_size)}  '
              f'allocated {human(fileutils.allocated_bytes(e.path))}  '
              f'digest {e.sha256.rsplit(":", 1)[-1][:12]}')
    print('\nRun it again: the cache is reused, each disk is one command '
          '(Qcow2) or none (Flat root).')
    return 0


if __name__ == '__main__':
    sys.exit(main())
