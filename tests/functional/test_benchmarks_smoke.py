"""The benchmark command runs end to end (``python -m benchmarks --quick``).

Only proves the command works with tiny sizes and writes a complete JSON
report: nothing here looks at how long anything took, and a missed target
is not a failure (the command exits 0 for those too). The suites run as
two ``--only`` commands at once (timings do not matter here; most of the
time is waiting on fsync, Ceph and Nova's imports), each with its own
work directory and report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SUITES = ('spawn_cached', 'cold_parallel', 'bytes', 'reflink', 'migration',
          'cache_manager', 'memory', 'nova_driver')
# Two commands of about the same length.
GROUPS = (('spawn_cached', 'bytes', 'memory', 'cache_manager'),
          ('nova_driver', 'cold_parallel', 'reflink', 'migration'))
# Backends whose floor is the root disk alone, and their figures.
ROOT_FLOOR_BACKENDS = ('lvm', 'rbd', 'ploop')
ROOT_FLOOR_FIGURES = {'spawn_cached': ('root.native_vs_floor',
                                       'subprocesses.native_vs_floor'),
                      'bytes': ('bytes.root_vs_floor',)}
# A hung run must fail, not hang CI; not a timing assertion.
GUARD = 900


def test_quick_benchmark_writes_every_suite(tmp_path, repo_root):
    assert sorted(s for g in GROUPS for s in g) == sorted(SUITES)
    listed = subprocess.run([sys.executable, '-m', 'benchmarks', '--list'],
                            cwd=repo_root, capture_output=True, text=True,
                            timeout=GUARD)
    assert listed.returncode == 0, listed.stderr
    assert all(name in listed.stdout for name in SUITES)
    runs = []
    for i, group in enumerate(GROUPS):
        out = tmp_path / f'report{i}.json'
        work = tmp_path / f'work{i}'
        work.mkdir()
        runs.append((out, work, subprocess.Popen(
            [sys.executable, '-m', 'benchmarks', '--quick', '--only',
             ','.join(group), '--out', str(out), '--workdir', str(work)],
            cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)))
    suites = {}
    for out, work, proc in runs:
        stdout, stderr = proc.communicate(timeout=GUARD)
        assert proc.returncode == 0, stdout + stderr
        report = json.loads(out.read_text())
        assert report['quick'] is True
        assert report['summary']['errors'] == []
        suites.update(report['suites'])
        # The table went to stdout; everything the run made is gone.
        assert 'figure' in stdout and 'ratio' in stdout
        assert os.listdir(work) == []
        with open('/proc/mounts') as f:
            assert str(work) not in f.read()
    assert set(suites) == set(SUITES)
    for name in SUITES:
        suite = suites[name]
        assert suite['status'] == 'ok', suite['error']
        assert suite['figures'], name
        for fig in suite['figures']:
            assert {'name', 'ratio', 'samples', 'median', 'baseline',
                    'target', 'met', 'unit'} <= set(fig), fig['name']
            assert len(fig['samples']) >= 5, fig['name']
            assert {'samples', 'median', 'description'} <= set(
                fig['baseline']), fig['name']
            assert len(fig['baseline']['samples']) >= 5, fig['name']

    # Lvm, Rbd and Ploop are measured: tools/bootstrap.sh installs their
    # storage, so a backend "not measured" here is a failure, not a skip;
    # so is Nova's driver (bootstrap makes .venv-nova).
    assert suites['spawn_cached']['context'].get(
        'backends_not_measured', {}) == {}
    assert 'not_measured' not in suites['nova_driver']['context']
    for suite, figures in ROOT_FLOOR_FIGURES.items():
        names = {f['name'] for f in suites[suite]['figures']}
        for backend in ROOT_FLOOR_BACKENDS:
            for fig in figures:
                assert f'{backend}.{fig}' in names, (suite, backend)
