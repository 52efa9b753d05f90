"""Real LVM for tests, on a kernel without device-mapper.

lvm2 runs for real against volume groups on loop devices, in an isolated
``LVM_SYSTEM_DIR`` with ``global/activation = 0`` (real-backends.md
section 2): every LVM command and its metadata are real; only activation
(device-mapper) is missing. This module stands in for device-mapper, for
linear LVs only: each LV's block device is a loop device over the LV's
extents on its PV (``losetup -o <pe_start + first PE * extent size>
--sizelimit <LV size> <PV loop>``), linked where LVM would put it,
``/dev/<vg>/<lv>``. So the code under test runs exactly as on a host with
device-mapper, at the same paths.

How: ``lvcreate``, ``lvextend``, ``lvresize``, ``lvreduce``, ``lvremove``
and ``lvrename`` are wrapped by scripts in ``<root>/bin``, first on the
test's ``PATH``. Each runs the real command, then :meth:`LvmEnv.sync`
(``python lvm_env.py sync <root>``), which makes the loop devices match
what ``lvs`` reports: a new LV gets one, an extended LV gets a new one (the
old one detached), a removed LV's is detached and its link removed. A
multi-segment LV cannot be stood in for by one loop device: sync reports it
and the wrapped command fails (tests grow an LV while it is the last one).
Thin pools and snapshots cannot be created at all on such a kernel.

The test process sets ``PATH``, ``LVM_SYSTEM_DIR`` and
``LVM_SUPPRESS_FD_WARNINGS=1`` in its environment (:meth:`LvmEnv.environ`);
the library passes its environment on to every command, and never names a
test setting. :meth:`LvmEnv.close` removes every LV, VG and PV and detaches
every loop device this module made.

Standard library only: the sync runs as a script in a fresh interpreter.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import uuid as uuid_mod

GiB = 1024 ** 3
DEV = '/dev'
WRAPPED = ('lvcreate', 'lvextend', 'lvresize', 'lvreduce', 'lvremove',
           'lvrename')
REPORT = ['--noheadings', '--nosuffix', '--units', 'b', '--separator', '|']

LVM_CONF = """\
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
    scan = [ "/dev" ]
    filter = [ %(accept)s"r|.*|" ]
}
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
global {
    activation = 0
    locking_dir = "%(lock)s"
    system_id_source = "none"
}
backup {
    backup = 0
    archive = 0
}
"""

WRAPPER = """\
#!/bin/sh
# Test stand-in for device-mapper: the real %(name)s, then loop devices
# over the LVs' extents (tests/functional/lvm_env.py).
%(real)s "$@"
rc=$?
if ! %(python)s %(module)s sync %(root)s; then
    echo "lvm_env: sync after %(name)s failed" >&2
    [ $rc -eq 0 ] && rc=97
fi
exit $rc
"""


class LvmEnvError(Exception):
    pass


def _run(cmd: list[str], env: dict | None = None,
         input: bytes | None = None) -> str:
    proc = subprocess.run(cmd, env=env, input=input, capture_output=True)
    if proc.returncode:
        raise LvmEnvError(f'{" ".join(cmd)}: rc {proc.returncode}: '
                          f'{proc.stderr.decode(errors="replace").strip()}')
    return proc.stdout.decode()


class LvmEnv:
    """Volume groups on loop devices under ``root`` (a fresh directory)."""

    def __init__(self, root: str):
        self.root = root
        self.etc = os.path.join(root, 'etc')
        self.lock = os.path.join(root, 'lock')
        self.bin = os.path.join(root, 'bin')
        self.state_file = os.path.join(root, 'state.json')

    # -- state shared with the sync subprocesses ------------------------------

    def _state(self) -> dict:
        try:
            with open(self.state_file) as f:
                return json.load(f)
        except FileNotFoundError:
            return {'vgs': {}}

    def _save(self, state: dict) -> None:
        tmp = self.state_file + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(state, f)
        os.replace(tmp, self.state_file)

    @property
    def vgs(self) -> dict[str, dict]:
        """vg name -> {'file': PV file, 'loop': PV loop device}."""
        return self._state()['vgs']

    @contextlib.contextmanager
    def _locked(self):
        with open(os.path.join(self.root, 'sync.lock'), 'w') as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def environ(self) -> dict[str, str]:
        """What the test process's environment must hold."""
        return {'LVM_SYSTEM_DIR': self.etc, 'LVM_SUPPRESS_FD_WARNINGS': '1',
                'PATH': self.bin + os.pathsep + os.environ.get('PATH', '')}

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.environ())
        # The real commands, not the wrappers (sync may hold the lock).
        env['PATH'] = os.pathsep.join(
            p for p in os.environ.get('PATH', '').split(os.pathsep)
            if p != self.bin)
        return env

    def lvm(self, *args: str) -> str:
        """Run a real (unwrapped) LVM command in this environment."""
        return _run(list(args), env=self._env())

    # -- set up ---------------------------------------------------------------

    def start(self) -> 'LvmEnv':
        for d in (self.etc, self.lock, self.bin):
            os.makedirs(d, exist_ok=True)
        self._save({'vgs': {}})
        self._write_conf()
        module = os.path.abspath(__file__)
        for name in WRAPPED:
            real = shutil.which(name)
            if real is None:
                raise LvmEnvError(f'{name} is not installed (apt: lvm2)')
            path = os.path.join(self.bin, name)
            with open(path, 'w') as f:
                f.write(WRAPPER % {'name': name, 'real': real,
                                   'python': sys.executable,
                                   'module': module, 'root': self.root})
            os.chmod(path, 0o755)
        return self

    def _write_conf(self) -> None:
        loops = [v['loop'] for v in self.vgs.values()]
        accept = ''.join(f'"a|^{loop}$|", ' for loop in loops)
        with open(os.path.join(self.etc, 'lvm.conf'), 'w') as f:
            f.write(LVM_CONF % {'accept': accept, 'lock': self.lock})

    def add_vg(self, size: int = 4 * GiB, prefix: str = 'ibtest') -> str:
        """A new volume group on a sparse file of ``size`` bytes."""
        vg = f'{prefix}-{uuid_mod.uuid4().hex[:10]}'
        path = os.path.join(self.root, f'{vg}.pv')
        with open(path, 'wb') as f:
            f.truncate(size)
        loop = _run(['losetup', '-f', '--show', '--direct-io=on',
                     path]).strip()
        state = self._state()
        state['vgs'][vg] = {'file': path, 'loop': loop}
        self._save(state)
        self._write_conf()
        self.lvm('pvcreate', '-y', loop)
        self.lvm('vgcreate', vg, loop)
        return vg

    # -- what LVM says --------------------------------------------------------

    def lvs(self, vg: str) -> dict[str, dict]:
        """LV name -> {'size', 'segments': [(pv, first PE, last PE)], ...}."""
        out = self.lvm('lvs', *REPORT, '-o',
                       'lv_name,lv_size,segtype,seg_start_pe,seg_pe_ranges',
                       vg)
        found: dict[str, dict] = {}
        for line in out.splitlines():
            fields = [f.strip() for f in line.split('|')]
            if len(fields) != 5 or not fields[0]:
                continue
            name, size, segtype, start, ranges = fields
            lv = found.setdefault(name, {'size': int(size), 'segments': [],
                                         'segtypes': set()})
            lv['segtypes'].add(segtype)
            for part in ranges.split():
                pv, _, span = part.rpartition(':')
                first, _, last = span.partition('-')
                lv['segments'].append((int(start), pv, int(first),
                                       int(last)))
        for lv in found.values():
            lv['segments'].sort()
        return found

    def pv_geometry(self) -> dict[str, tuple[int, int]]:
        """PV device -> (pe_start, extent size) in bytes."""
        out = self.lvm('pvs', *REPORT, '-o', 'pv_name,pe_start,vg_extent_size')
        geo = {}
        for line in out.splitlines():
            fields = [f.strip() for f in line.split('|')]
            if len(fields) == 3 and fields[0]:
                geo[fields[0]] = (int(fields[1]), int(fields[2]))
        return geo

    def extent_range(self, vg: str, lv: str) -> tuple[str, int, int]:
        """(PV loop device, byte offset, size) of a single-segment LV."""
        info = self.lvs(vg)[lv]
        geo = self.pv_geometry()
        placement = _placement(info, geo)
        if isinstance(placement, str):
            raise LvmEnvError(placement)
        return placement

    def _loops(self) -> list[dict]:
        out = _run(['losetup', '--json', '--list', '-O',
                    'NAME,BACK-FILE,OFFSET,SIZELIMIT'])
        if not out.strip():
            return []
        return json.loads(out).get('loopdevices', [])

    # -- the stand-in for device-mapper ---------------------------------------

    def sync(self) -> list[str]:
        """Make ``/dev/<vg>/<lv>`` loop devices match the LVs; return the
        problems (LVs that cannot be backed by one loop device)."""
        with self._locked():
            vgs = self.vgs
            pv_loops = {v['loop'] for v in vgs.values()}
            geo = self.pv_geometry()
            desired: dict[tuple[str, str], tuple[str, int, int]] = {}
            problems = []
            for vg in vgs:
                for lv, info in self.lvs(vg).items():
                    placement = _placement(info, geo)
                    if isinstance(placement, str):
                        problems.append(f'{vg}/{lv}: {placement}')
                    else:
                        desired[(vg, lv)] = placement
            loops = {d['name']: (d['back-file'], int(d['offset']),
                                 int(d['sizelimit']))
                     for d in self._loops()
                     if d.get('back-file') in pv_loops}
            linked = set()
            for vg in vgs:
                vg_dir = os.path.join(DEV, vg)
                if not os.path.isdir(vg_dir):
                    continue
                for lv in os.listdir(vg_dir):
                    link = os.path.join(vg_dir, lv)
                    loop = os.readlink(link) if os.path.islink(link) else None
                    if loop in loops and desired.get((vg, lv)) == loops[loop]:
                        linked.add((vg, lv))
                        loops.pop(loop)
                        continue
                    os.unlink(link)
            for loop in loops:  # ours, but no longer linked to a live LV
                _run(['losetup', '-d', loop])
            for (vg, lv), (pv, offset, size) in sorted(desired.items()):
                if (vg, lv) in linked:
                    continue
                # Direct I/O: loop over loop through two page caches is
                # slow and holds every block twice.
                loop = _run(['losetup', '-f', '--show', '--direct-io=on',
                             '-o', str(offset), '--sizelimit', str(size),
                             pv]).strip()
                os.makedirs(os.path.join(DEV, vg), exist_ok=True)
                os.symlink(loop, os.path.join(DEV, vg, lv))
            for vg in vgs:
                vg_dir = os.path.join(DEV, vg)
                if os.path.isdir(vg_dir) and not os.listdir(vg_dir):
                    os.rmdir(vg_dir)
            return problems

    # -- between tests, and at the end ----------------------------------------

    def reset(self, vg: str) -> None:
        """Remove every LV of ``vg`` and zero its extents (discard), so the
        next test starts on a blank volume group."""
        if self.lvs(vg):
            self.lvm('lvremove', '-y', vg)
        self.sync()
        pe_start, _extent = self.pv_geometry()[self.vgs[vg]['loop']]
        loop = self.vgs[vg]['loop']
        size = os.path.getsize(self.vgs[vg]['file'])
        _run(['blkdiscard', '-o', str(pe_start), '-l', str(size - pe_start),
              loop])

    def our_loops(self) -> list[str]:
        """Every loop device this environment made that is still attached."""
        pv_files = {v['file'] for v in self.vgs.values()}
        pv_loops = {v['loop'] for v in self.vgs.values()}
        return sorted(d['name'] for d in self._loops()
                      if d.get('back-file') in pv_files | pv_loops)

    def close(self) -> list[str]:
        """Remove every LV, VG and PV, detach every loop device, delete the
        files; return the loop devices still attached (should be none)."""
        errors = []

        def step(fn, *args):
            try:
                fn(*args)
            except LvmEnvError as e:
                errors.append(str(e))

        for vg in self.vgs:
            step(self.lvm, 'lvremove', '-y', vg)
        step(self.sync)  # detaches the LVs' loop devices
        for vg, info in self.vgs.items():
            step(self.lvm, 'vgremove', '-y', vg)
            step(self.lvm, 'pvremove', '-y', info['loop'])
        for loop in self.our_loops():
            try:
                _run(['losetup', '-d', loop])
            except LvmEnvError as e:
                errors.append(str(e))
        for vg, info in self.vgs.items():
            shutil.rmtree(os.path.join(DEV, vg), ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(info['file'])
        left = self.our_loops()
        if errors and not left:
            # Report, but only what matters: leftovers fail the caller.
            print('lvm_env: cleanup warnings:', *errors, sep='\n  ',
                  file=sys.stderr)
        return left


def _placement(info: dict, geo: dict) -> tuple[str, int, int] | str:
    """(PV, byte offset, size) of a linear LV on contiguous extents, or why
    one loop device cannot stand in for it."""
    if info['segtypes'] - {'linear'}:
        return f'segment type {sorted(info["segtypes"])} is not linear'
    segments = info['segments']
    if not segments:
        return 'no segments'
    pv, first = segments[0][1], segments[0][2]
    expect = first
    for _start, seg_pv, seg_first, seg_last in segments:
        if seg_pv != pv or seg_first != expect:
            return ('its extents are not contiguous on one PV; a loop device '
                    'can only stand in for a single-segment linear LV')
        expect = seg_last + 1
    pe_start, extent = geo[pv]
    return (pv, pe_start + first * extent, info['size'])


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] != 'sync':
        print('usage: lvm_env.py sync <root>', file=sys.stderr)
        return 2
    env = LvmEnv(argv[2])
    os.environ.update({'LVM_SYSTEM_DIR': env.etc,
                       'LVM_SUPPRESS_FD_WARNINGS': '1'})
    try:
        problems = env.sync()
    except LvmEnvError as e:
        print(f'lvm_env: {e}', file=sys.stderr)
        return 1
    for p in problems:
        print(f'lvm_env: {p}', file=sys.stderr)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
