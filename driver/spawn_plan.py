"""What :func:`flows.spawn` would do on this host, per disk, done by nothing.

The disks come from the flow's own iterator
(:func:`instance_disks.instance_disks`: names, sizes, backends, templates)
and are skipped by the flow's own rule (a record saying ``created``, or a
disk already there); each disk's backend says what its creation would run
(``Image.plan_create``, :mod:`imagebackend.plans`). Nothing is created,
locked or written: the plan reads records, the image cache and the image
source at one moment.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from imagebackend import exception
from imagebackend import plans

from driver import instance_disks

CREATE = 'create'
KEEP = 'keep'          # its record says created, or the disk is there
REMAKE = 'remake'      # a creation that died: what it left goes first


@dataclasses.dataclass
class DiskPlan:
    disk: str
    backend: str
    location: str
    size: int | None
    source: tuple[str, str]
    action: str
    steps: list[plans.Step] = dataclasses.field(default_factory=list)
    # Why spawn would fail on this disk, if it would.
    error: str | None = None
    # False where the backend does not say what its creation runs.
    planned: bool = True

    @property
    def fetch_bytes(self) -> int:
        return sum(s.fetch_bytes for s in self.steps)

    @property
    def write_bytes(self) -> int:
        return sum(s.write_bytes for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {'disk': self.disk, 'backend': self.backend,
                'location': self.location, 'size': self.size,
                'source': {'type': self.source[0], 'id': self.source[1]},
                'action': self.action, 'planned': self.planned,
                'error': self.error, 'fetch_bytes': self.fetch_bytes,
                'write_bytes': self.write_bytes,
                'steps': [s.to_dict() for s in self.steps]}


def plan_spawn(backend, instance, mapping: dict,
               block_device_info: dict | None = None) -> list[DiskPlan]:
    """Per disk of ``instance``, what :func:`flows.spawn` would do."""
    records = {r.name: r for r in backend.records.list(instance.uuid)}
    out = []
    for disk in instance_disks.instance_disks(backend, instance, mapping,
                                              block_device_info):
        image = disk.image
        record = records.get(disk.name)
        p = DiskPlan(disk=disk.name, backend=image.image_type,
                     location=image.location, size=disk.size,
                     source=disk.source, action=CREATE)
        out.append(p)
        if record is not None:
            p.action = KEEP if record.created else REMAKE
        else:
            # The flow asks whether a disk with no record is there.
            p.steps += image.plan_exists()
            try:
                if disk.exists():
                    p.action = KEEP
            except exception.ImageBackendError as e:
                p.error = f'{type(e).__name__}: {e.message}'
                continue
        action = p.action
        if action == KEEP:
            continue
        if action == REMAKE:
            p.steps.append(plans.Step(
                f'remove what a creation that died left of {disk.name} '
                f'(its record says {record.state})'))
        source_type, source_id = disk.source
        if not getattr(disk, 'keep_template', True):
            source_type = 'content'  # per-instance: create_from_content
        try:
            steps = image.plan_create(source_type, source_id,
                                      getattr(disk, 'func', None), disk.size)
        except plans.Refused as e:
            p.steps += e.steps
            p.error = f'{type(e.error).__name__}: {e.error.message}'
            continue
        except exception.ImageBackendError as e:
            p.error = f'{type(e).__name__}: {e.message}'
            continue
        if steps is None:
            p.planned = False
            p.steps.append(plans.Step(
                f'the {image.image_type} backend creates {image.location} '
                f'from {source_type} {source_id}; it does not say how '
                'before it runs'))
            continue
        p.steps += steps
    return out
