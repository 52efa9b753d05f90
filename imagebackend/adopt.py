"""Records for the disks of an instance Nova's own module made.

Nova's module keeps no record of a disk, only its format in ``disk.info``.
Adopting an instance gives each of its disks without a record one, decided
as the library decides it on a disk's first touch
(:meth:`Backend.adoption_record`: disk.info's format, else this host's
config, never a probe of the disk's bytes), and then checked:

- the bytes must be able to be that format (format_inspector): a
  disk.info that says raw of a file with a qcow2 header may be stale
  (Nova's resize converts raw to qcow2 without updating it) or a guest's
  own header, and which is not adoption's to decide;
- a disk with a backing file must name a base inside the image cache that
  is still there and whose format is the one the disk's header gives it.

A base Nova made has no sidecar, so nothing says what its bytes should be;
adopting a disk on it describes it (:meth:`ImageCache.adopt`: inspected,
safety-checked, digested), so that from then on a changed base is found.

What cannot be decided is reported and gets no record. Writes run under
the instance's lock; a dry run writes nothing (and takes no lock).
"""

from __future__ import annotations

import dataclasses
import os

from imagebackend import disk_info
from imagebackend import exception
from imagebackend import formats
from imagebackend import instance_dirs
from imagebackend import locks
from imagebackend import names
from imagebackend import observe
from imagebackend import records as records_mod

ADOPTED = 'adopted'
WOULD_ADOPT = 'would-adopt'      # a dry run's answer
UNDECIDED = 'undecided'
RECORDED = 'recorded'            # it had a record already
FAILED = 'failed'                # reading or writing failed
# Why an adopted disk would get its format (its record's provenance
# 'from'), as a report says it.
_SAID_BY = {
    'disk.info': 'disk.info says {fmt}',
    'host config': "this host's config says {fmt}",
    'raw: not in disk.info': 'it is not in disk.info (Nova lists every '
                             'disk it makes), so it would be {fmt}',
}
# Template names (Nova's ephemeral and swap bases); others are images.
_TEMPLATE_PREFIXES = ('ephemeral_', 'swap_')


@dataclasses.dataclass(frozen=True)
class Adoption:
    """What adopting one disk did or would do."""

    instance: str
    disk: str | None
    outcome: str
    record: records_mod.DiskRecord | None = None
    reason: str | None = None
    # The base given a sidecar for this disk (or that would be).
    base_described: str | None = None

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data['record'] = self.record.to_dict() if self.record else None
        return data


def adopt_instance(backend, uuid: str, *,
                   dry_run: bool = False) -> list[Adoption]:
    """Adopt every disk of instance ``uuid`` that has no record."""
    names.check_instance_uuid(uuid)
    instance_dir = os.path.join(backend.conf.instances_path, uuid)
    if not os.path.isdir(instance_dir):
        raise exception.InvalidInput(
            reason=f'no instance directory {instance_dir}')
    if dry_run:
        return _adopt(backend, uuid, instance_dir, dry_run)
    with locks.instance_lock(backend.conf, uuid):
        return _adopt(backend, uuid, instance_dir, dry_run)


def _adopt(backend, uuid, instance_dir, dry_run) -> list[Adoption]:
    try:
        recorded = {r.name: r for r in backend.records.list(uuid)}
        candidates = instance_dirs.disk_files(instance_dir)
    except exception.CorruptRecord as e:
        return [Adoption(uuid, None, UNDECIDED, reason=e.message)]
    out = []
    for name in sorted(set(candidates) | set(recorded)):
        if name in recorded:
            out.append(Adoption(uuid, name, RECORDED, recorded[name]))
            continue
        try:
            out.append(_adopt_disk(backend, uuid, name, dry_run))
        except (OSError, exception.ImageBackendError) as e:
            # A write or read that failed (no space, permissions): this
            # disk only; its record is whole or absent (atomic writes).
            out.append(Adoption(uuid, name, FAILED, reason=str(e)))
    return out


def _adopt_disk(backend, uuid: str, name: str, dry_run: bool) -> Adoption:
    instance = observe.InstanceRef(uuid)
    path = os.path.join(backend.conf.instances_path, uuid, name)

    def undecided(reason):
        return Adoption(uuid, name, UNDECIDED, reason=reason)

    listed = disk_info.format_of(path)
    if listed is not None:
        # Before anything reads the file as that format.
        problem = _header_problem(path, listed, _SAID_BY['disk.info'])
        if problem:
            return undecided(problem)
    try:
        record = backend.adoption_record(instance, name, created_here=True)
    except exception.RecordNotFound:
        return undecided('it is not in disk.info, and this host\'s '
                         'configured backend has no such disk: nothing '
                         'says what it is')
    except exception.ImageBackendError as e:
        return undecided(e.message)
    problem = _header_problem(path, record.format, _SAID_BY.get(
        record.provenance.get('from'), 'adoption says {fmt}'))
    if problem:
        return undecided(problem)
    described = None
    if record.backing is not None:
        try:
            record, described = _with_base(backend, instance, record,
                                           dry_run)
        except exception.ImageBackendError as e:
            return undecided(e.message)
    if dry_run:
        return Adoption(uuid, name, WOULD_ADOPT, record,
                        base_described=described)
    backend.save_adopted(instance, record)
    return Adoption(uuid, name, ADOPTED, record, base_described=described)


def _header_problem(path: str, fmt: str, said: str) -> str | None:
    """Why the file at ``path`` cannot be taken for ``fmt``, or None.
    ``said``: who says ``fmt`` ('... {fmt}')."""
    if not os.path.isfile(path):
        return None
    seen = observe.content_format(path)
    if observe.formats_agree(fmt, seen):
        return None
    return (f'{said.format(fmt=fmt)}, but its bytes look like '
            f'{seen or "several formats"}: a stale disk.info, a disk not '
            'made by Nova, or a header a guest wrote into its own disk; '
            'not decided')


def _with_base(backend, instance, record, dry_run):
    """``record`` with its base's sha256, the base described first if
    nothing described it (a base Nova made); and the base's name if it
    was (or would be) described. ImageUnacceptable if the base is gone,
    fails inspection, or is not the format the disk names."""
    cache = backend.image_cache
    name = record.backing
    path = cache.path(name)

    def refuse(reason):
        return exception.ImageUnacceptable(image_id=name, reason=reason)

    if not os.path.exists(path):
        raise refuse(f'{record.name} reads through {path}, which is gone')
    entry = cache.get(name) if dry_run else None
    if not dry_run and os.path.exists(path + names.META_SUFFIX):
        entry = cache.check(name)  # changed bytes are refused
    if entry is not None:
        return record, None
    kind = 'template' if name.startswith(_TEMPLATE_PREFIXES) else 'image'
    if dry_run:
        found = formats.detect(path, image_id=name)
        fmt = formats.cache_format(found.format)
        if fmt != record.backing_format:
            raise refuse(f'{record.name} names it {record.backing_format}, '
                         f'its bytes are {fmt}')
        return record, name
    try:
        cache.adopt(name, kind, name)
    except exception.CorruptCacheEntry:
        pass  # described meanwhile: the record below checks it
    # Decided again: now with the sidecar's sha256 and format check.
    return backend.adoption_record(instance, record.name), name
