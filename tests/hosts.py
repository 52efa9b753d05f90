"""A host for tests: its config, and the Nova-shaped instance it serves."""

from __future__ import annotations

import dataclasses
import uuid as uuid_mod

from oslo_config import cfg

import imagebackend

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclasses.dataclass
class Instance:
    """The Nova-shaped bits of an instance the library reads."""

    uuid: str = dataclasses.field(default_factory=lambda: str(uuid_mod.uuid4()))
    name: str = 'instance-1'
    os_type: str | None = 'linux'


def make_conf(instances_path: str, images_dir: str) -> cfg.ConfigOpts:
    """A fresh ConfigOpts for a host with these two folders."""
    conf = cfg.ConfigOpts()
    imagebackend.config.register_opts(conf)
    conf.set_override('instances_path', instances_path)
    conf.set_override('images_dir', images_dir, group='imagebackend')
    conf([])
    return conf
