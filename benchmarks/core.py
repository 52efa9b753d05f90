"""Repetitions, figures, targets and the table.

A *figure* is one number the report stands behind: the median of the
measured side's samples divided by the median of a baseline's samples, both
taken in the same run (never a constant), with every raw sample kept. A
*target* (from the issue) says what the ratio, the median or the worst
sample should be; a miss is a finding, reported, never an error.

Timing uses :func:`time.perf_counter`; commands the library runs are
counted with :func:`imagebackend.processes.recording`.
"""

from __future__ import annotations

import dataclasses
import operator
import statistics
import sys
import time
import traceback
from typing import Any, Callable

from imagebackend import processes

_OPS = {'<=': operator.le, '<': operator.lt, '==': operator.eq,
        '>=': operator.ge, '>': operator.gt}


@dataclasses.dataclass(frozen=True)
class Target:
    """``<on> <op> <value>``; ``on`` is 'ratio', 'median' or 'max' (the
    worst sample of the measured side)."""

    op: str
    value: float
    on: str = 'ratio'
    why: str = ''

    def check(self, fig: 'Figure') -> bool | None:
        actual = {'ratio': fig.ratio, 'median': fig.median,
                  'max': max(fig.samples) if fig.samples else None}[self.on]
        if actual is None:
            return None
        return bool(_OPS[self.op](actual, self.value))

    @property
    def text(self) -> str:
        what = {'ratio': '', 'median': 'median ', 'max': 'every '}[self.on]
        value = f'{self.value:g}'
        return f'{what}{self.op} {value}' + ('x' if self.on == 'ratio'
                                               else '')

    def to_dict(self) -> dict[str, Any]:
        return {'on': self.on, 'op': self.op, 'value': self.value,
                'text': self.text, 'why': self.why}


@dataclasses.dataclass
class Figure:
    name: str
    description: str
    unit: str                 # 's', 'bytes', 'count', 'MiB'
    samples: list[float]
    baseline_description: str
    baseline_samples: list[float]
    target: Target | None = None
    context: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def baseline_median(self) -> float | None:
        return (statistics.median(self.baseline_samples)
                if self.baseline_samples else None)

    @property
    def ratio(self) -> float | None:
        m, b = self.median, self.baseline_median
        if m is None or b is None:
            return None
        if b == 0:
            return 1.0 if m == 0 else None
        return m / b

    @property
    def met(self) -> bool | None:
        return self.target.check(self) if self.target else None

    def to_dict(self, suite: str) -> dict[str, Any]:
        return {
            'name': self.name,
            'suite': suite,
            'description': self.description,
            'unit': self.unit,
            'samples': self.samples,
            'median': self.median,
            'baseline': {'description': self.baseline_description,
                         'samples': self.baseline_samples,
                         'median': self.baseline_median},
            'ratio': self.ratio,
            'target': self.target.to_dict() if self.target else None,
            'met': self.met,
            'context': self.context,
        }


# -- repetitions --------------------------------------------------------------

@dataclasses.dataclass
class Side:
    """One thing to measure: ``run(i)`` is timed; ``setup(i)`` and
    ``teardown(i)`` are not. ``run`` may return a dict of extra per-run
    values (e.g. per-disk times), kept in :class:`Runs`."""

    name: str
    run: Callable[[int], Any]
    setup: Callable[[int], Any] | None = None
    teardown: Callable[[int], Any] | None = None


@dataclasses.dataclass
class Runs:
    """The measured repetitions of one side (warm-ups are not kept)."""

    seconds: list[float] = dataclasses.field(default_factory=list)
    commands: list[list[tuple[str, ...]]] = dataclasses.field(
        default_factory=list)
    extras: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def extra(self, key: str) -> list[Any]:
        return [e[key] for e in self.extras]

    def count(self, pred: Callable[[tuple[str, ...]], bool] | None = None
              ) -> list[int]:
        """Per run: how many commands the library ran (matching pred)."""
        return [sum(1 for c in cmds if pred is None or pred(c))
                for cmds in self.commands]


def interleaved(sides: list[Side], reps: int, warmup: int
                ) -> dict[str, Runs]:
    """Run every side ``warmup`` + ``reps`` times, interleaved and rotated
    (rep i starts with side i mod k) so drift and order hit every side
    alike. Returns the measured runs by side name."""
    out = {s.name: Runs() for s in sides}
    k = len(sides)
    for i in range(-warmup, reps):
        shift = i % k
        for side in sides[shift:] + sides[:shift]:
            if side.setup:
                side.setup(i)
            with processes.recording() as cmds:
                t0 = time.perf_counter()
                extra = side.run(i)
                elapsed = time.perf_counter() - t0
            if side.teardown:
                side.teardown(i)
            if i >= 0:
                runs = out[side.name]
                runs.seconds.append(elapsed)
                runs.commands.append(list(cmds))
                runs.extras.append(extra or {})
    return out


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


# -- a suite's run ------------------------------------------------------------

class SuiteRun:
    """What one suite produced: figures, context, or an error."""

    def __init__(self, name: str):
        self.name = name
        self.figures: list[Figure] = []
        self.context: dict[str, Any] = {}
        self.error: str | None = None
        self.seconds: float = 0.0

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def log(self, msg: str) -> None:
        print(f'[{self.name}] {msg}', file=sys.stderr, flush=True)

    def fail(self, exc: BaseException) -> None:
        self.error = ''.join(traceback.format_exception(exc)).strip()

    def to_dict(self) -> dict[str, Any]:
        return {'status': 'error' if self.error else 'ok',
                'error': self.error,
                'seconds': round(self.seconds, 3),
                'figures': [f.to_dict(self.name) for f in self.figures],
                'context': self.context}


# -- formatting ---------------------------------------------------------------

def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return '-'
    if unit == 's':
        if value < 1e-3:
            return f'{value * 1e6:.0f} us'
        if value < 1:
            return f'{value * 1e3:.1f} ms'
        return f'{value:.2f} s'
    if unit == 'bytes':
        for div, name in ((1 << 30, 'GiB'), (1 << 20, 'MiB'),
                          (1 << 10, 'KiB')):
            if abs(value) >= div:
                return f'{value / div:.1f} {name}'
        return f'{value:.0f} B'
    if unit == 'MiB':
        return f'{value:.1f} MiB'
    if value == int(value):
        return f'{int(value)}'
    return f'{value:.1f}'


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return '-'
    if ratio != 0 and abs(ratio) < 0.01:
        return f'{ratio:.1e}'
    return f'{ratio:.2f}'


def table(suites: list[SuiteRun]) -> str:
    header = ('figure', 'measured', 'baseline', 'ratio', 'target', 'met')
    rows = []
    for suite in suites:
        for f in suite.figures:
            met = {True: 'yes', False: 'MISS', None: ''}[f.met]
            rows.append((f.name, fmt_value(f.median, f.unit),
                         fmt_value(f.baseline_median, f.unit),
                         fmt_ratio(f.ratio),
                         f.target.text if f.target else '', met))
        if suite.error:
            rows.append((f'{suite.name}: ERROR', '', '', '', '',
                         suite.error.splitlines()[-1][:60]))
    widths = [max(len(r[i]) for r in rows + [header])
              for i in range(len(header))]
    align = ['<', '>', '>', '>', '<', '<']

    def line(r):
        return '  '.join(f'{c:{a}{w}}' for c, a, w in zip(r, align, widths)
                         ).rstrip()
    out = [line(header), line(tuple('-' * w for w in widths))]
    out += [line(r) for r in rows]
    return '\n'.join(out)
