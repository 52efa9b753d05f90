"""Host-mode commands on instances: ``instance show``, ``adopt``, ``verify``.

The logic lives in the library (:mod:`imagebackend.observe`,
:mod:`imagebackend.verify`, :mod:`imagebackend.adopt`); this module turns
command lines into calls and results into tables or JSON.
"""

from __future__ import annotations

import argparse

from imagebackend import adopt as adopt_mod
from imagebackend import exception
from imagebackend import instance_dirs
from imagebackend import names
from imagebackend import verify as verify_mod

from driver import cli

_SHOW = """\
Show each disk of instance UUID as its record (disks.json) describes it,
next to what is really there: whether it exists, the format its bytes
look like to format_inspector, its virtual size measured with the
record's format (qemu-img info -f, never a probe), the bytes it takes, and
the base it reads through. Differences are listed as in `verify`.
Read-only. Exit status 1 when something differs."""

_ADOPT = """\
Write records (disks.json) for instances Nova's own module made: every
disk of the instance without a record gets one, with the format Nova's
disk.info gives it, else the one this host's config (images_type,
use_cow_images) gives it; a disk's bytes never decide its format. A base
in the image cache that Nova made (no sidecar) gets one when a disk being
adopted reads through it: inspected, safety-checked and digested, so
`verify` finds it changed later.

What cannot be decided gets no record and is reported with why: a disk
neither disk.info nor the config describes, a format its header
contradicts, a backing file outside the image cache or gone, a base that
fails inspection. Holds each instance's lock while writing. Exit status 1
when something was left undecided (or failed), 0 otherwise."""

_VERIFY = """\
Check every record against what is really there: a disk that is missing
or cannot be read as its record's format, size or format drift, a base
that is missing, names another file, or whose bytes changed (its sha256,
from the disk's record and the base's sidecar, recomputed in full), disks
with no record and records still "creating". Read-only. Exit status 1
when anything differs, 0 when every instance is clean. With --json, each
finding has a machine-readable kind:
""" + '\n'.join(f'  {kind:19} {text}'
                for kind, text in verify_mod.KINDS.items())


def register(subparsers) -> None:
    """Add this module's commands to the host-mode parser."""
    raw = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        'instance', help='look at one instance', description='Look at one '
        'instance of this host.', formatter_class=raw)
    isub = p.add_subparsers(dest='instance_command', required=True,
                            metavar='COMMAND')
    p = isub.add_parser('show', help="an instance's disks: records next to "
                        'what is there', description=_SHOW,
                        formatter_class=raw)
    p.add_argument('uuid', metavar='UUID')
    p.set_defaults(func=cmd_instance_show)

    p = subparsers.add_parser(
        'adopt', help="write records for disks Nova's own module made",
        description=_ADOPT, formatter_class=raw)
    _targets(p)
    p.add_argument('--dry-run', action='store_true',
                   help='say what would be adopted; write nothing')
    p.set_defaults(func=cmd_adopt)

    p = subparsers.add_parser(
        'verify', help='check every record against the storage',
        description=_VERIFY, formatter_class=raw)
    _targets(p)
    p.set_defaults(func=cmd_verify)


def _targets(parser) -> None:
    parser.add_argument('uuids', nargs='*', metavar='UUID',
                        help='instances to work on')
    parser.add_argument('--all', action='store_true',
                        help='every instance directory under '
                             'instances_path (named by a uuid)')


def _uuids(host, args) -> list[str]:
    if bool(args.uuids) == bool(args.all):
        raise exception.InvalidInput(reason='name instances (UUID ...) or '
                                            'give --all, not both')
    if args.all:
        return instance_dirs.instance_uuids(host.instances_path)
    return [names.check_instance_uuid(u) for u in args.uuids]


# -- instance show ----------------------------------------------------------

def cmd_instance_show(host, args):
    uuid = names.check_instance_uuid(args.uuid)
    report = verify_mod.check_instance(host.backend(), uuid)
    states = {s.name: s for s in report.states}
    disks = []
    for record in report.records:
        state = states.get(record.name)
        disks.append({
            'name': record.name,
            'record': record.to_dict(),
            'actual': state.to_dict() if state else None,
            'findings': [f.to_dict() for f in report.findings
                         if f.disk == record.name]})
    data = {'instance': uuid, 'clean': report.clean, 'disks': disks,
            'findings': [f.to_dict() for f in report.findings]}
    return data, _show_text(data), 0 if report.clean else 1


def _show_text(data) -> str:
    rows = []
    for disk in data['disks']:
        rec, act = disk['record'], disk['actual'] or {}
        backing = act.get('backing')
        if backing:
            base = (f"{backing['entry'] or backing['path']} "
                    f"({backing['format'] or '?'})")
            if not backing['exists']:
                base += ' MISSING'
        else:
            base = (f"{rec['backing']} ({rec.get('backing_format')})"
                    if rec.get('backing') else None)
        rows.append({
            'disk': disk['name'], 'backend': rec['backend'],
            'format': rec['format'],
            'bytes': act.get('content_format') if act.get(
                'content_checked') else None,
            'exists': 'yes' if act.get('exists') else 'NO',
            'recorded': cli.human(rec['virtual_size']),
            'actual': cli.human(act.get('virtual_size')),
            'allocated': cli.human(act.get('allocated')),
            'backing': base,
            'drift': ','.join(f['kind'] for f in disk['findings']) or 'ok'})
    lines = [f"instance {data['instance']}", cli.table(rows, [
        ('disk', 'DISK'), ('backend', 'BACKEND'), ('format', 'FORMAT'),
        ('bytes', 'BYTES LOOK LIKE'), ('exists', 'EXISTS'),
        ('recorded', 'SIZE (RECORD)'), ('actual', 'SIZE (ACTUAL)'),
        ('allocated', 'ALLOCATED'), ('backing', 'BASE'),
        ('drift', 'DRIFT')])]
    lines += _findings_lines(data['findings'])
    return '\n'.join(lines)


def _findings_lines(findings) -> list[str]:
    return [f"  {f['kind']}: {f['disk'] or '-'}: {f['message']}"
            for f in findings]


# -- adopt ------------------------------------------------------------------

def cmd_adopt(host, args):
    backend = host.backend()
    results: list[adopt_mod.Adoption] = []
    for uuid in _uuids(host, args):
        results += adopt_mod.adopt_instance(backend, uuid,
                                            dry_run=args.dry_run)
    undecided = [r for r in results if r.outcome in (adopt_mod.UNDECIDED,
                                                      adopt_mod.FAILED)]
    done = [r for r in results if r.outcome in (adopt_mod.ADOPTED,
                                                adopt_mod.WOULD_ADOPT)]
    data = {'dry_run': args.dry_run, 'undecided': len(undecided),
            'adopted': len(done),
            'disks': [r.to_dict() for r in results]}
    # A base Nova made, given a sidecar as a disk on it is adopted.
    described = 'would be described' if args.dry_run else 'described'
    rows = [{'instance': r.instance, 'disk': r.disk, 'outcome': r.outcome,
             'backend': r.record.backend if r.record else None,
             'format': r.record.format if r.record else None,
             'size': cli.human(r.record.virtual_size) if r.record else None,
             'base': r.record.backing if r.record else None,
             'why': r.reason or (f'base {r.base_described} {described}'
                                 if r.base_described else None)}
            for r in results]
    verb = 'would adopt' if args.dry_run else 'adopted'
    text = '\n'.join([cli.table(rows, [
        ('instance', 'INSTANCE'), ('disk', 'DISK'), ('outcome', 'OUTCOME'),
        ('backend', 'BACKEND'), ('format', 'FORMAT'), ('size', 'SIZE'),
        ('base', 'BASE'), ('why', 'NOTE')]),
        f'{verb} {len(done)} disk(s); {len(undecided)} undecided'])
    return data, text, 1 if undecided else 0


# -- verify -----------------------------------------------------------------

def cmd_verify(host, args):
    backend = host.backend()
    digests = verify_mod.BaseDigests()
    reports = [verify_mod.check_instance(backend, uuid, digests)
               for uuid in _uuids(host, args)]
    findings = [f.to_dict() for r in reports for f in r.findings]
    data = {'clean': not findings, 'instances': [
        {'instance': r.instance, 'clean': r.clean, 'disks': len(r.records),
         'findings': [f.to_dict() for f in r.findings]} for r in reports]}
    disks = sum(len(r.records) for r in reports)
    summary = (f'{len(reports)} instance(s), {disks} disk(s): ' +
               ('clean' if not findings else f'{len(findings)} finding(s)'))
    if findings:
        text = '\n'.join([cli.table(findings, [
            ('instance', 'INSTANCE'), ('disk', 'DISK'), ('kind', 'KIND'),
            ('message', 'MESSAGE')]), summary])
    else:
        text = summary
    return data, text, 1 if findings else 0
