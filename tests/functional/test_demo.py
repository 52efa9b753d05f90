"""The README's main job (examples/spawn_demo.py) runs, twice, end to end."""

import json
import pathlib
import runpy
import sys

import pytest

DEMO = pathlib.Path(__file__).resolve().parents[2] / 'examples' / \
    'spawn_demo.py'


def _run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, 'argv', [str(DEMO), *args])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(DEMO), run_name='__main__')
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize('image_type', ['qcow2', 'flat'])
def test_demo_runs_twice(tmp_path, monkeypatch, capsys, image_type):
    state = str(tmp_path / 'state')
    first = _run(monkeypatch, capsys, '--state-dir', state, '--backend',
                 image_type)
    assert 'disk.local' in first and 'disk.swap' in first
    records = json.loads(_run(monkeypatch, capsys, '--state-dir', state,
                              '--backend', image_type, '--json'))
    assert sorted(r['name'] for r in records) == ['disk', 'disk.local',
                                                  'disk.swap']
    assert {r['state'] for r in records} == {'created'}
    assert {r['backend'] for r in records} == {image_type}
