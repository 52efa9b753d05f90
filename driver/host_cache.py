"""Host-mode ``cache audit`` and ``cache clean`` (see driver/host_cli.py).

``cache audit`` only reads: every ``_base`` entry re-inspected and the
disks using it; exit 1 when any entry is flagged. ``cache clean`` removes
entries no record uses, unused for the grace period, and refuses (exit 2,
nothing removed) while any instance has disks with no record.
The logic lives in :mod:`imagebackend.cache_audit`.
"""

from __future__ import annotations


from imagebackend import cache_audit

from driver import cli_common


def register(subparsers) -> None:
    """Add this module's commands to the host-mode parser."""
    cache = subparsers.add_parser(
        'cache', help='audit and clean the host\'s image cache',
        description='audit and clean the host\'s image cache')
    sub = cache.add_subparsers(dest='cache_command', required=True,
                               metavar='ACTION')
    p = sub.add_parser(
        'audit', help='re-inspect every cache entry and name its users; '
        'exit 1 if any is flagged (read-only)')
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser(
        'clean', help='remove entries no record uses, older than the grace '
        'period; refused while any instance has disks with no record')
    p.add_argument('--dry-run', action='store_true',
                   help='say what would be removed, remove nothing')
    p.add_argument('--grace', type=cli_common.seconds, default=None, metavar='SECONDS',
                   help='seconds an entry must have been unused (default: '
                        '[image_cache] '
                        'remove_unused_original_minimum_age_seconds)')
    p.set_defaults(func=cmd_clean)


def _who(disks: list[dict[str, str]]) -> str:
    return ', '.join(f'{d["instance"]}/{d["disk"]}' for d in disks) or '-'


def cmd_audit(host, args):
    backend = host.backend()
    entries, recs = cache_audit.audit(backend)
    flagged = [e.name for e in entries if e.flagged]
    data = {'base_dir': backend.image_cache.base_dir,
            'entries': [e.to_dict() for e in entries],
            'flagged': flagged,
            'unrecorded': recs.unrecorded,
            'record_errors': recs.errors}
    lines = []
    for e in entries:
        side = e.sidecar or {}
        declared = (f'{side["kind"]} {side["source"]}, {side["format"]}'
                    if side else 'no sidecar')
        seen = (e.detected or {}).get('format') or '?'
        lines.append(f'{e.status.upper():10} {e.name}  ({declared}; '
                     f'bytes: {seen})')
        for p in e.problems:
            lines.append(f'    {p.kind}: {p.detail}')
        if e.users:
            lines.append(f'    used by: {_who(e.users)}')
        if e.unrecorded_users:
            lines.append('    used by (no record, run adopt): '
                         f'{_who(e.unrecorded_users)}')
        if e.made_from:
            lines.append(f'    copied into: {_who(e.made_from)}')
    for d, disks in sorted(recs.unrecorded.items()):
        lines.append(f'instance {d}: disks with no record: '
                     f'{", ".join(disks)} (run adopt)')
    for d, why in sorted(recs.errors.items()):
        lines.append(f'instance {d}: records unreadable: {why}')
    lines.append(f'{len(entries)} entries, {len(flagged)} flagged')
    return data, '\n'.join(lines), (1 if flagged else 0)


def cmd_clean(host, args):
    result = cache_audit.clean(host.backend(), args.grace,
                               dry_run=args.dry_run)
    verb = 'would remove' if args.dry_run else 'removed'
    text = [f'{verb} {len(result.removed)} unused entries']
    text += [f'  {n}' for n in result.removed]
    text += [f'kept {n}: {why}' for n, why in sorted(result.kept.items())]
    return result.to_dict(), '\n'.join(text), 0
