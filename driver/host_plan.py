"""Host-mode ``plan spawn`` (see driver/host_cli.py): what spawn would do
on this host, per disk, without doing it (:mod:`driver.spawn_plan`)."""

from __future__ import annotations

import uuid as uuid_mod

from imagebackend import names

from driver import cli_common
from driver import instance as instance_mod
from driver import spawn_plan


def register(subparsers) -> None:
    """Add this module's commands to the host-mode parser."""
    plan = subparsers.add_parser(
        'plan', help='what an operation would do on this host, doing '
        'nothing', description='what an operation would do on this host, '
        'doing nothing')
    sub = plan.add_subparsers(dest='plan_command', required=True,
                              metavar='OPERATION')
    p = sub.add_parser(
        'spawn', help='per disk: backend, commands, bytes to fetch and '
        'write')
    p.add_argument('--image', required=True, help='image id')
    p.add_argument('--root-gb', type=cli_common.count, default=1,
                   help='root disk size in GiB (0: the image\'s size)')
    p.add_argument('--ephemeral-gb', type=cli_common.count, default=0,
                   help='flavor ephemeral disk (disk.local) in GiB')
    p.add_argument('--swap-mb', type=cli_common.count, default=0,
                   help='swap disk size in MiB')
    p.add_argument('--ephemeral-bdm', type=cli_common.count, action='append',
                   metavar='GB', help='an extra ephemeral disk (repeatable)')
    p.add_argument('--bdm-format', default=None,
                   help='filesystem of --ephemeral-bdm disks')
    p.add_argument('--os-type', default='linux',
                   help='picks the ephemeral filesystem as Nova does')
    p.add_argument('--config-drive', action='store_true',
                   help='the instance has a config drive')
    p.add_argument('--images-type', default=None, metavar='TYPE',
                   help='plan on this images_type instead of the host\'s')
    p.add_argument('--uuid', default=None, type=names.check_instance_uuid,
                   help='an existing instance: disks its records say exist '
                        'are kept (default: a new instance)')
    p.set_defaults(func=cmd_plan_spawn)


def cmd_plan_spawn(host, args):
    instance = instance_mod.Instance(
        uuid=args.uuid or str(uuid_mod.uuid4()), image_ref=args.image,
        os_type=args.os_type, config_drive=args.config_drive,
        flavor=instance_mod.Flavor(root_gb=args.root_gb,
                                   ephemeral_gb=args.ephemeral_gb,
                                   swap=args.swap_mb))
    bdi = {}
    if args.ephemeral_bdm:
        bdi['ephemerals'] = [{'size': gb, 'guest_format': args.bdm_format}
                             for gb in args.ephemeral_bdm]
    backend = host.backend(args.images_type)
    mapping = instance_mod.disk_mapping(instance, bdi)
    disks = spawn_plan.plan_spawn(backend, instance, mapping, bdi)
    failing = [d.disk for d in disks if d.error]
    data = {'instance': instance.uuid, 'disks': [d.to_dict() for d in disks],
            'fetch_bytes': sum(d.fetch_bytes for d in disks),
            'write_bytes': sum(d.write_bytes for d in disks),
            'would_fail': failing}
    lines = [f'spawn of {instance.uuid} from image {args.image} on this host '
             '(nothing done):']
    for d in disks:
        lines.append(f'{d.disk}: {d.action} on {d.backend} at {d.location}'
                     f' ({d.size or "image"} bytes; fetch {d.fetch_bytes}, '
                     f'write up to {d.write_bytes})')
        for s in d.steps:
            lines.append(f'  - {s.what}' + (f' [{s.when}]' if s.when else ''))
            if s.command:
                lines.append('      $ ' + ' '.join(s.command))
        if not d.planned:
            lines.append('  (not planned: its commands and bytes are the '
                         'backend\'s to decide when it runs)')
        if d.error:
            lines.append(f'  ! spawn would fail here: {d.error}')
    lines.append(f'total: fetch {data["fetch_bytes"]} bytes, write up to '
                 f'{data["write_bytes"]} bytes')
    return data, '\n'.join(lines), (1 if failing else 0)
