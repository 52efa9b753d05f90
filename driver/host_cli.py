"""The operator CLI on a real compute host.

``imagebackend --config-file /etc/nova/nova.conf [--config-dir DIR] COMMAND``
reads the host's configuration with oslo.config, under Nova's option
names, and looks at that host's instances and image cache. The commands
live in small modules, each adding its own sub-commands through
``register(subparsers)``; a command's function takes ``(host, args)`` and
returns ``(data, text, exit_code)``: ``data`` is printed with ``--json``,
``text`` otherwise.
"""

from __future__ import annotations

import argparse
import importlib

from driver import cli_common
from driver import host as host_mod
from imagebackend import exception

# The modules whose register() adds this mode's commands.
COMMAND_MODULES = ('driver.host_instances', 'driver.host_cache',
                   'driver.host_plan')

_CONFIG_FLAGS = ('--config-file', '--config-dir')


def wanted(argv: list[str]) -> bool:
    """True when ``argv`` names a config file or directory (host mode)."""
    return any(arg.split('=', 1)[0] in _CONFIG_FLAGS for arg in argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='imagebackend', description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config-file', action='append', default=[],
                        metavar='PATH',
                        help='a nova.conf to read (repeatable, later files '
                             'win, as in nova-compute)')
    parser.add_argument('--config-dir', action='append', default=[],
                        metavar='DIR',
                        help='a directory of *.conf files read after the '
                             'config files (repeatable)')
    parser.add_argument('--json', action='store_true',
                        help='print JSON for scripts instead of tables')
    sub = parser.add_subparsers(dest='command', required=True,
                                metavar='COMMAND')
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        host = host_mod.Host(args.config_file, args.config_dir)
        data, text, code = args.func(host, args)
    except exception.ImageBackendError as e:
        return cli_common.fail(args, type(e).__name__, e.message)
    except OSError as e:
        return cli_common.fail(args, type(e).__name__, str(e))
    cli_common.emit(args, data, text)
    return code
