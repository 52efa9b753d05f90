"""The CLI's local world: images, hosts and instances under one state dir.

    <state-dir>/images/<id>.<format>           the image source (embedded)
    <state-dir>/hosts/<host>/instances/         that host's instances_path
    <state-dir>/hosts/<host>/host.json          its config: images_type, ...
    <state-dir>/instances/<uuid>.json           instance definitions (the
                                                compute database stand-in)

A host exists once ``host set`` made it (the default host, ``host-a``, is
made on first use); any other host name is an error, never created by the
command that names it. An instance's definition is saved ``building``
before a spawn makes any disk and ``active`` once it finished, so a spawn
that died is listed and can be deleted.

Every host is a directory on this machine; a LocalTransport maps host names
to their instances_path, so migrations between hosts are real copies.
"""

from __future__ import annotations

import dataclasses
import json
import os

from oslo_config import cfg

import imagebackend
from imagebackend import exception
from imagebackend import fileutils
from imagebackend import names
from imagebackend import transport as transport_mod

from driver import instance as instance_mod

DEFAULT_STATE_DIR = '/var/tmp/imagebackend'
DEFAULT_HOST = 'host-a'
# Instance states: a spawn that has not finished (or died), and a whole one.
BUILDING = 'building'
ACTIVE = 'active'
STATES = (BUILDING, ACTIVE)


class UnknownHost(exception.InvalidInput):
    msg_fmt = ("Unknown host %(host)r (known: %(known)s); create it with "
               "'host set %(host)s' first")

# Host settings the CLI keeps per host, and the option group of each.
HOST_OPTIONS = {
    'images_type': 'libvirt', 'use_cow_images': None,
    'force_raw_images': None, 'preallocate_images': None,
    'images_volume_group': 'libvirt', 'volume_clear': 'libvirt',
    'images_rbd_pool': 'libvirt', 'images_rbd_ceph_conf': 'libvirt',
    'rbd_user': 'libvirt', 'thin_pool': 'imagebackend',
}


class State:
    """Hosts, images and instances kept under ``root``."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.images_dir = os.path.join(self.root, 'images')
        self.hosts_dir = os.path.join(self.root, 'hosts')
        self.instances_dir = os.path.join(self.root, 'instances')
        for d in (self.images_dir, self.hosts_dir, self.instances_dir):
            os.makedirs(d, exist_ok=True)

    # -- hosts -----------------------------------------------------------------

    def hosts(self) -> list[str]:
        return sorted(n for n in os.listdir(self.hosts_dir)
                      if os.path.isdir(os.path.join(self.hosts_dir, n)))

    def check_host(self, host: str) -> str:
        """``host`` if it exists (the default host is made here on first
        use); UnknownHost otherwise, and nothing is created."""
        path = self.instances_path(host)
        if os.path.isdir(os.path.join(self.hosts_dir, host)):
            return host
        if host == DEFAULT_HOST:
            os.makedirs(path, exist_ok=True)
            return host
        raise UnknownHost(host=host, known=', '.join(self.hosts()) or
                          'none')

    def instances_path(self, host: str) -> str:
        names.check_disk_name(host)
        return os.path.join(self.hosts_dir, host, 'instances')

    def host_config(self, host: str) -> dict:
        path = os.path.join(self.hosts_dir, host, 'host.json')
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise exception.CorruptRecord(location=path, reason=str(e))

    def set_host_config(self, host: str, **options) -> dict:
        unknown = set(options) - set(HOST_OPTIONS)
        if unknown:
            raise exception.InvalidInput(
                reason=f'unknown host options {sorted(unknown)}')
        config = dict(self.host_config(host), **options)
        os.makedirs(self.instances_path(host), exist_ok=True)
        fileutils.atomic_write_json(
            os.path.join(self.hosts_dir, host, 'host.json'), config)
        return config

    def conf(self, host: str, images_type: str | None = None
             ) -> cfg.ConfigOpts:
        self.check_host(host)
        conf = cfg.ConfigOpts()
        imagebackend.config.register_opts(conf)
        path = self.instances_path(host)
        os.makedirs(path, exist_ok=True)
        conf.set_override('instances_path', path)
        conf.set_override('images_dir', self.images_dir,
                          group='imagebackend')
        settings = self.host_config(host)
        if images_type:
            settings['images_type'] = images_type
        for key, value in settings.items():
            conf.set_override(key, value, group=HOST_OPTIONS.get(key))
        conf([])
        return conf

    def transport(self) -> transport_mod.LocalTransport:
        return transport_mod.LocalTransport(
            {h: self.instances_path(h) for h in self.hosts()})

    def backend(self, host: str, images_type: str | None = None
                ) -> imagebackend.Backend:
        return imagebackend.Backend(conf=self.conf(host, images_type),
                                    transport=self.transport())

    # -- instances ---------------------------------------------------------------

    def _instance_file(self, uuid: str) -> str:
        return os.path.join(self.instances_dir,
                            names.check_instance_uuid(uuid) + '.json')

    def save(self, instance: instance_mod.Instance,
             block_device_info: dict | None = None,
             status: str = ACTIVE) -> None:
        """Write the instance's definition (atomically), ``status``
        saying whether its spawn finished."""
        if status not in STATES:
            raise exception.InvalidInput(reason=f'bad status {status!r}')
        data = dataclasses.asdict(instance)
        data['block_device_info'] = block_device_info or {}
        data['status'] = status
        fileutils.atomic_write_json(self._instance_file(instance.uuid), data)

    def forget(self, instance: instance_mod.Instance) -> None:
        fileutils.remove_path(self._instance_file(instance.uuid))

    def entries(self) -> list[tuple[instance_mod.Instance, dict, str]]:
        """Every instance with its block device info and status."""
        found = []
        for name in sorted(os.listdir(self.instances_dir)):
            # Hidden names are atomic_write_json's temporary files.
            if name.endswith('.json') and not name.startswith('.'):
                found.append(self._load(os.path.join(self.instances_dir,
                                                     name)))
        return found

    def instances(self) -> list[tuple[instance_mod.Instance, dict]]:
        return [(i, b) for i, b, _s in self.entries()]

    def _load(self, path: str
              ) -> tuple[instance_mod.Instance, dict, str]:
        try:
            with open(path) as f:
                data = json.load(f)
            bdi = data.pop('block_device_info', {})
            # Definitions written before statuses were kept are whole.
            status = data.pop('status', ACTIVE)
            if status not in STATES:
                raise ValueError(f'unknown status {status!r}')
            data['flavor'] = instance_mod.Flavor(**data['flavor'])
            return instance_mod.Instance(**data), bdi, status
        except (ValueError, KeyError, TypeError) as e:
            raise exception.CorruptRecord(location=path, reason=str(e))

    def find(self, ref: str) -> tuple[instance_mod.Instance, dict]:
        """An instance by uuid, unique uuid prefix, or unique name."""
        instance, bdi, _status = self.find_entry(ref)
        return instance, bdi

    def find_entry(self, ref: str
                   ) -> tuple[instance_mod.Instance, dict, str]:
        """:meth:`find`, with the instance's status."""
        if not isinstance(ref, str) or not ref.strip():
            # '' is a prefix of every uuid: it must never pick one.
            raise exception.InvalidInput(
                reason='an instance reference must not be empty')
        entries = self.entries()
        matches = [e for e in entries if e[0].uuid == ref or e[0].name == ref]
        if not matches:
            matches = [e for e in entries if e[0].uuid.startswith(ref)]
        if len(matches) != 1:
            raise exception.InvalidInput(
                reason=f'{ref!r} matches {len(matches)} instances; give a '
                       'uuid or a unique name')
        return matches[0]
