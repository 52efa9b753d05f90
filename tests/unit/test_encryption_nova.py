"""Encryption's inputs as real Nova 34 gives them: a Nova Instance object
(an unset ephemeral_key_uuid must read as None, never lazy-load) and
castellan's key manager API as Nova configures it (here its fixed-key
ConfKeyManager), with the library's options registered next to Nova's.
Nova lives in its own virtualenv (.venv-nova, tools/bootstrap.sh), so the
check runs there in a subprocess."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOVA_PYTHON = ROOT / '.venv-nova' / 'bin' / 'python'

PROBE = """
import json
from castellan import key_manager
from oslo_config import cfg
from nova import context as nova_context
from nova import objects
import nova.conf  # noqa: registers [key_manager] and Nova's options
objects.register_all()
from imagebackend import encryption
from imagebackend import config
CONF = cfg.CONF
CONF([], project='nova')
config.register_opts(CONF)  # next to Nova's own: no DuplicateOptError
CONF.set_override('fixed_key', '00' * 32, group='key_manager')
CONF.set_override('backend', 'nova.keymgr.conf_key_mgr.ConfKeyManager', group='key_manager')
ctx = nova_context.RequestContext('u', 'p')
km = key_manager.API(CONF)
key_uuid = km.create_key(ctx, 'AES', 256)
inst = objects.Instance(uuid='0b2c8f4e-0c1a-4d6e-9a53-2f0e8c3d4b11')
out = {'unset': encryption.instance_key_uuid(inst)}
inst.ephemeral_key_uuid = key_uuid
out['set'] = encryption.instance_key_uuid(inst) == key_uuid
out['key'] = encryption.get_key(km, ctx, key_uuid, 'vg/lv').hex()
out['nova_key'] = km.get(ctx, key_uuid).get_encoded().hex()
out['required'] = encryption.required_by(CONF, inst)
CONF.set_override('enabled', True, group='ephemeral_storage_encryption')
out['enabled'] = encryption.required_by(CONF, objects.Instance(uuid=inst.uuid))
print(json.dumps(out))
"""


def test_nova_instance_and_castellan_key_manager():
    assert NOVA_PYTHON.exists(), 'run tools/bootstrap.sh (.venv-nova)'
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([str(NOVA_PYTHON), '-W', 'ignore', '-c', PROBE],
                          env=env, capture_output=True, text=True,
                          cwd=str(ROOT), timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out['unset'] is None
    assert out['set'] is True
    # What the library fetches is what Nova's Lvm gives cryptsetup.
    assert out['key'] == out['nova_key'] == '00' * 32
    assert 'ephemeral_key_uuid' in out['required']
    assert out['enabled'] == '[ephemeral_storage_encryption] enabled is set'
