"""The package's public names: what a compute-driver author reads.

Plumbing (the image cache, record stores, sources, transports) is reached
from its own module, never from the package.
"""

import json
import os
import subprocess
import sys

import imagebackend
from imagebackend import backend as backend_mod

PUBLIC = {'Backend', 'Image', 'DiskFromImage', 'DiskFromFunc', 'DiskRecord',
          'exception', 'config', 'Flat', 'Qcow2', 'Lvm', 'Rbd', 'Ploop'}
BACKEND_CLASSES = {'Flat': 'flat', 'Qcow2': 'qcow2', 'Lvm': 'lvm',
                   'Rbd': 'rbd', 'Ploop': 'ploop'}
PLUMBING = ('ImageCache', 'CacheEntry', 'MemoryStore', 'InstanceDirStore',
            'RecordStore', 'LocalTransport', 'RsyncTransport', 'Transport',
            'DirectoryImageSource', 'ImageSource', 'ImageMeta',
            'Capabilities', 'CreatableDisk')


def test_public_names():
    assert sorted(imagebackend.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(imagebackend, name) is not None
    assert PUBLIC <= set(dir(imagebackend))


def test_backend_classes_are_the_factorys():
    for name, image_type in BACKEND_CLASSES.items():
        assert getattr(imagebackend, name) is \
            backend_mod.backend_class(image_type)


def test_plumbing_is_not_in_the_package():
    for name in PLUMBING:
        assert not hasattr(imagebackend, name), name


# What a driver using only file disks must not pay for (nor need).
HEAVY = ('rbd', 'rados', 'libvirt')
PROBE = f"""
import json, sys
import imagebackend
loaded = lambda: sorted(m for m in sys.modules
                        if m.split('.')[0] in {HEAVY!r})
before = loaded()
opts = [group for group, _ in imagebackend.config.list_opts()]
imagebackend.Rbd
print(json.dumps({{'before': before, 'opts': opts, 'after': loaded()}}))
"""


def test_import_loads_no_librbd_nor_libvirt():
    # A fresh interpreter: this one has imported the backends already.
    root = os.path.dirname(os.path.dirname(imagebackend.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    out = subprocess.run([sys.executable, '-c', PROBE], env=env, check=True,
                         capture_output=True, text=True).stdout
    seen = json.loads(out.splitlines()[-1])
    assert seen['before'] == []
    # imagebackend.config is there without importing it by name.
    assert 'libvirt' in seen['opts']
    # The probe would see them: Rbd, asked for, loads librbd.
    assert {'rbd', 'rados'} <= set(seen['after'])
