"""``python -m benchmarks``: run the suites, print a table, write JSON.

Exit status: 0 when every suite ran (missed targets are findings, not
failures), 1 when a suite raised an error, 2 for bad usage or not enough
free space, 130 when interrupted. Everything is made in a fresh directory
under ``--workdir`` (default /var/tmp) and removed at the end, also on
errors and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from imagebackend import fileutils

from benchmarks import env, floors
from benchmarks.core import SuiteRun, table
from benchmarks.suites import SUITES, Context

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, 'results')
MIN_REPS = 5
MARGIN = 512 * env.MiB


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog='python -m benchmarks',
        description='Spawn, migration and cache benchmarks: every figure is '
                    'a ratio against a baseline measured in the same run '
                    '(medians after a warm-up; raw samples in the JSON).')
    p.add_argument('--quick', action='store_true',
                   help='tiny sizes, 1 warm-up + 5 repetitions (smoke test)')
    p.add_argument('--only', metavar='NAME[,NAME]',
                   help='run only these suites: ' + ', '.join(SUITES))
    p.add_argument('--reps', type=int, metavar='N',
                   help=f'measured repetitions per figure (>= {MIN_REPS}; '
                        'default 7, --quick 5)')
    p.add_argument('--workdir', metavar='DIR', default='/var/tmp',
                   help='where to make the temporary work directory '
                        '(default /var/tmp); it is removed at the end')
    p.add_argument('--out', metavar='PATH',
                   help='JSON report (default benchmarks/results/'
                        '<timestamp>.json)')
    p.add_argument('--list', action='store_true',
                   help='list the suites and exit')
    args = p.parse_args(argv)
    if args.reps is not None and args.reps < MIN_REPS:
        p.error(f'--reps must be at least {MIN_REPS} (figures are medians '
                f'of at least {MIN_REPS} repetitions)')
    names = list(SUITES)
    if args.only:
        names = [n.strip() for n in args.only.split(',') if n.strip()]
        unknown = [n for n in names if n not in SUITES]
        if unknown or not names:
            p.error(f'unknown suite(s) {", ".join(unknown) or "(none)"}; '
                    f'known: {", ".join(SUITES)}')
    args.suites = names
    return args


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)


def host_info(workdir: str) -> dict:
    def out(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True,
                                  cwd=os.path.dirname(HERE)
                                  ).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return None
    commit = out('git', 'rev-parse', 'HEAD')
    dirty = out('git', 'status', '--porcelain')
    return {'hostname': platform.node(), 'kernel': platform.release(),
            'cpus': os.cpu_count(), 'python': sys.version.split()[0],
            'executable': sys.executable,
            'qemu_img': out('qemu-img', '--version'),
            'workdir_fs': env.fs_type(workdir),
            'git_commit': commit, 'git_dirty': bool(dirty)}


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for name, mod in SUITES.items():
            print(f'{name:15} {mod.TITLE}')
        return 0
    sizes = env.QUICK if args.quick else env.FULL
    reps = args.reps or (5 if args.quick else 7)
    warmup = 1
    parent = os.path.abspath(args.workdir)
    if not os.path.isdir(parent):
        print(f'benchmarks: --workdir {parent} is not a directory',
              file=sys.stderr)
        return 2
    needed = max(SUITES[n].space_needed(sizes) for n in args.suites) + MARGIN
    free = env.free_bytes(parent)
    if free < needed:
        print(f'benchmarks: refusing to run: {needed / env.GiB:.1f} GiB free '
              f'space needed under {parent}, only {free / env.GiB:.1f} GiB '
              'available. Use --workdir on a bigger filesystem, --quick, or '
              '--only without the big suites (reflink).', file=sys.stderr)
        return 2
    if not floors.available():
        print('benchmarks: no backend can be measured here: '
              f'{floors.unavailable()}', file=sys.stderr)
        return 2
    out = args.out or os.path.join(
        RESULTS, time.strftime('%Y%m%d-%H%M%S') + '.json')

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _sigterm)
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix='imagebackend-bench-', dir=parent)
    print(f'benchmarks: {"quick" if args.quick else "full"} run, {reps} reps '
          f'after {warmup} warm-up, suites {", ".join(args.suites)}; work '
          f'directory {workdir} ({free / env.GiB:.1f} GiB free, '
          f'{needed / env.GiB:.1f} GiB needed)', file=sys.stderr)
    runs: list[SuiteRun] = []
    envs = floors.Environments(os.path.join(workdir, 'environments'), sizes)
    env_error = None
    try:
        info = host_info(workdir)
        for name in args.suites:
            mod = SUITES[name]
            result = SuiteRun(name)
            runs.append(result)
            suite_dir = os.path.join(workdir, name)
            os.makedirs(suite_dir)
            result.log(mod.TITLE)
            t0 = time.perf_counter()
            try:
                mod.run(Context(sizes=sizes, reps=reps, warmup=warmup,
                                quick=args.quick, dir=suite_dir,
                                envs=envs), result)
            except Exception as e:
                result.fail(e)
                result.log('ERROR:\n' + result.error)
            finally:
                result.seconds = time.perf_counter() - t0
                fileutils.remove_path(suite_dir)
    except (KeyboardInterrupt, SystemExit) as e:
        print(f'benchmarks: interrupted ({type(e).__name__}); work '
              'directory removed, no report written', file=sys.stderr)
        return 130
    finally:
        try:
            envs.close()    # volume group, Ceph daemons: also on errors
        except Exception as e:
            env_error = f'{type(e).__name__}: {e}'
            print(f'benchmarks: tearing down a backend environment failed: '
                  f'{env_error}', file=sys.stderr)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    report = {
        'schema': 1,
        'started': started.isoformat(timespec='seconds'),
        'duration_s': round(time.perf_counter() - t_start, 1),
        'argv': sys.argv[1:] if argv is None else list(argv),
        'quick': args.quick, 'reps': reps, 'warmup': warmup,
        'statistic': 'median of the measured repetitions; ratio = '
                     'median(measured) / median(baseline)',
        'sizes': dataclasses.asdict(sizes),
        'host': info,
        'suites': {r.name: r.to_dict() for r in runs},
    }
    targets = [f for r in runs for f in r.figures if f.target]
    report['summary'] = {
        'figures': sum(len(r.figures) for r in runs),
        'targets': len(targets),
        'met': sum(1 for f in targets if f.met),
        'missed': [f.name for f in targets if f.met is False],
        'errors': [r.name for r in runs if r.error]
        + (['environments'] if env_error else []),
    }
    if env_error:
        report['environments_error'] = env_error
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(report, f, indent=1)
        f.write('\n')
    os.replace(tmp, out)

    print(table(runs))
    s = report['summary']
    print(f'\n{s["figures"]} figures, {s["met"]}/{s["targets"]} targets met'
          + (f'; missed: {", ".join(s["missed"])}' if s['missed'] else '')
          + (f'; ERRORS in: {", ".join(s["errors"])}' if s['errors'] else '')
          + f'\nJSON: {out}')
    return 1 if s['errors'] else 0
