"""A real compute host, as its nova.conf describes it.

The operator CLI's second mode (``imagebackend --config-file
/etc/nova/nova.conf COMMAND``) looks at the host nova-compute runs on,
not at a simulated state directory. The options are Nova's own names,
read by oslo.config exactly as nova-compute reads them; nothing here
changes the host: commands that change something say so themselves.
"""

from __future__ import annotations

from oslo_config import cfg

import imagebackend
from imagebackend import config
from imagebackend import exception


class Host:
    """The host's configuration and a Backend made from it."""

    def __init__(self, config_files: list[str] | None = None,
                 config_dirs: list[str] | None = None):
        self.conf = cfg.ConfigOpts()
        config.register_opts(self.conf)
        args: list[str] = []
        for path in config_files or ():
            args += ['--config-file', path]
        for path in config_dirs or ():
            args += ['--config-dir', path]
        try:
            # default_config_files=[]: only what the operator named is read,
            # never a stray /etc/nova/nova.conf of another host layout.
            self.conf(args, project='nova', default_config_files=[])
        except (cfg.ConfigFilesNotFoundError, cfg.ConfigDirNotFoundError,
                cfg.ConfigFileParseError, cfg.ConfigFileValueError) as e:
            raise exception.InvalidConfig(reason=str(e)) from e

    @property
    def instances_path(self) -> str:
        return self.conf.instances_path

    def backend(self, images_type: str | None = None) -> imagebackend.Backend:
        """A Backend for this host (``images_type`` overrides the config)."""
        if images_type is not None:
            self.conf.set_override('images_type', images_type,
                                   group='libvirt')
        return imagebackend.Backend(conf=self.conf)
