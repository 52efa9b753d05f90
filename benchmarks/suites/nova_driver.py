"""8. Nova's real LibvirtDriver: its own image backend vs the library's face.

Nova's unmodified ``LibvirtDriver._create_image`` (root from the image,
grown to the flavor's root; ephemeral; swap) makes one instance's disks,
once on Nova's own ``nova.virt.libvirt.imagebackend`` and once on
``imagebackend.nova`` put in its place, sides interleaved. Nova runs in
its own virtualenv (.venv-nova, Nova 34.0.0), so each side is a child
process of that Python (:mod:`benchmarks.nova_driver_child`) that this
suite asks for one instance at a time; the children time ``_create_image``
themselves and report every process it started. Glance is a local file
copy. Warm: the image and templates are cached (after the warm-up);
cold: each instance on an empty cache, so the fetch and the templates are
made too.

Context for the remaining time: how much of ``_create_image`` is spent
outside the image backend's entry points (``Backend.by_name``,
``Image.cache``, ``Image.exists``), i.e. in Nova's own driver code.

Without .venv-nova (tools/bootstrap.sh makes it) nothing is measured and
the suite's context says why.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess

from benchmarks import env, process_log
from benchmarks.core import Figure, Side, Target, interleaved

NAME = 'nova_driver'
TITLE = "Nova's LibvirtDriver._create_image: Nova's module vs the face"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
NOVA_PYTHON = os.path.join(ROOT, '.venv-nova', 'bin', 'python')
CHILD = os.path.join(ROOT, 'benchmarks', 'nova_driver_child.py')
BACKENDS = ('qcow2', 'flat')
SIDES = (('nova', "Nova 34's own nova.virt.libvirt.imagebackend"),
         ('library', 'imagebackend.nova in its place'))


def space_needed(s: env.Sizes) -> int:
    # The source image, one cold cache per side (the raw base, ephemeral
    # and swap templates: sparse) and an instance's copied root (Flat).
    return 6 * s.image_data + 512 * env.MiB


def unavailable() -> str | None:
    if not os.path.exists(NOVA_PYTHON):
        return (f'no Nova virtualenv at {NOVA_PYTHON} (tools/bootstrap.sh '
                'makes it)')
    return None


def flavor(s: env.Sizes) -> tuple[int, int, int]:
    """(root GiB, ephemeral GiB, swap MiB): Nova's flavor units."""
    return (max(1, s.root // env.GiB), max(1, s.ephemeral // env.GiB),
            max(1, s.swap // env.MiB))


class Child:
    """One side: Nova's driver in a .venv-nova process, asked for
    instances one at a time."""

    def __init__(self, side: str, backend: str, image: str, virtual: int,
                 sizes: tuple[int, int, int], work: str):
        os.makedirs(work)
        self.log_path = os.path.join(work, 'child.log')
        self._log = open(self.log_path, 'w')
        cmd = [NOVA_PYTHON, '-W', 'ignore', CHILD, '--backend', backend,
               '--image', image, '--image-virtual', str(virtual),
               '--flavor', ','.join(map(str, sizes)), '--work', work]
        if side == 'nova':
            cmd.append('--own')
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, text=True, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS='ignore'))
        self.module = self._answer()['ready']

    def _answer(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            with open(self.log_path) as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f'nova driver child exited '
                               f'({self._proc.returncode}):\n{tail}')
        return json.loads(line)

    def make(self, cold: bool) -> dict:
        self._proc.stdin.write(json.dumps({'op': 'make', 'cold': cold})
                               + '\n')
        self._proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        try:
            if self._proc.poll() is None:
                self._proc.stdin.write('{"op": "quit"}\n')
                self._proc.stdin.close()
                self._proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        finally:
            self._log.close()


def run(ctx, result) -> None:
    why = unavailable()
    if why:
        result.context['not_measured'] = {NAME: why}
        result.log(f'not measured: {why}')
        return
    s = ctx.sizes
    sizes = flavor(s)
    images = os.path.join(ctx.dir, 'images')
    os.makedirs(images)
    image, data = env.make_image(images, 'nova', s.image_virtual,
                                 s.image_data)
    result.context.update(
        image={'virtual_size': s.image_virtual, 'data_bytes': data,
               'format': 'qcow2'},
        flavor={'root_gb': sizes[0], 'ephemeral_gb': sizes[1],
                'swap_mb': sizes[2]},
        nova_python=NOVA_PYTHON,
        glance='stubbed: the download copies the local image file')
    for backend in BACKENDS:
        children = {}
        try:
            for side, _ in SIDES:
                children[side] = Child(
                    side, backend, image, s.image_virtual, sizes,
                    os.path.join(ctx.dir, f'{backend}-{side}'))
            result.context.setdefault('modules', {}).update(
                {side: c.module for side, c in children.items()})
            for child in children.values():
                child.make(cold=False)  # fills the cache: later ones warm
            _warm(ctx, result, backend, children)
            _cold(ctx, result, backend, children)
        finally:
            for child in children.values():
                child.close()


def _measure(ctx, children, cold: bool) -> dict[str, list[dict]]:
    sides = [Side(side, (lambda i, c=children[side]: c.make(cold)))
             for side, _ in SIDES]
    runs = interleaved(sides, ctx.reps, ctx.warmup)
    return {side: r.extras for side, r in runs.items()}


def _seconds(extras: list[dict]) -> list[float]:
    return [e['seconds'] for e in extras]


def _outside(extras: list[dict]) -> list[float]:
    return [e['seconds'] - e['backend_seconds'] for e in extras]


def _info_count(extras: list[dict]) -> list[int]:
    return [sum(1 for c in e['commands'] if process_log.is_qemu_img_info(c))
            for e in extras]


def _commands(extras: list[dict]) -> dict[str, int]:
    return env.command_names(tuple(c) for c in extras[0]['commands'])


def _warm(ctx, result, t, children) -> None:
    result.log(f'{t}: warm instance, {ctx.reps} reps')
    runs = _measure(ctx, children, cold=False)
    nova, lib = runs['nova'], runs['library']
    share = {side: statistics.median(
                 (e['seconds'] - e['backend_seconds']) / e['seconds']
                 for e in extras) for side, extras in runs.items()}
    _library_vs_nova(result, t, 'warm', 'warm cache (root, ephemeral, '
                     'swap)', runs, Target(
                         '<=', 0.5, why="issue 12: the library's gain "
                         "reaches Nova's users through Nova's own driver"),
                     outside_backend_share=share)
    result.add(Figure(
        name=f'nova_driver.{t}.warm.outside_backend',
        description="library side: time in Nova's own driver code, outside "
                    "the image backend's entry points",
        unit='s', samples=_outside(lib),
        baseline_description='the whole _create_image (library side)',
        baseline_samples=_seconds(lib),
        context={'note': 'the ratio is the share of what remains that the '
                         'image backend cannot remove',
                 'nova_side_outside_s': _outside(nova)}))
    result.add(Figure(
        name=f'nova_driver.{t}.warm.qemu_img_info',
        description='qemu-img info per warm instance, library side',
        unit='count', samples=_info_count(lib),
        baseline_description='the same, Nova side',
        baseline_samples=_info_count(nova),
        target=Target('==', 0, on='max', why='issue 12: no qemu-img info on '
                      'a base or disk the library made and recorded')))


def _cold(ctx, result, t, children) -> None:
    result.log(f'{t}: cold instance, {ctx.reps} reps')
    runs = _measure(ctx, children, cold=True)
    _library_vs_nova(result, t, 'cold', 'empty cache (the fetch, a local '
                     'copy, and the templates included)', runs, Target(
                         '<=', 1.0, why="issue 12: a cold instance through "
                         "Nova's driver no slower than on Nova's module"))


def _library_vs_nova(result, t, cache, what, runs, target, **context):
    """The figure nova_driver.<t>.<cache>.library_vs_nova."""
    result.add(Figure(
        name=f'nova_driver.{t}.{cache}.library_vs_nova',
        description=f"Nova's LibvirtDriver._create_image on {SIDES[1][1]}, "
                    f'{what}',
        unit='s', samples=_seconds(runs['library']),
        baseline_description=f'the same driver on {SIDES[0][1]}',
        baseline_samples=_seconds(runs['nova']), target=target,
        context=dict(context, commands={
            side: _commands(extras) for side, extras in runs.items()},
            backend_seconds={side: [e['backend_seconds'] for e in extras]
                             for side, extras in runs.items()})))
