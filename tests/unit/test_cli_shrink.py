"""The CLI's resize refuses a shrink with the flow's own check."""

import types

import pytest

from imagebackend import exception

from driver import cli
from driver import flows


@pytest.mark.parametrize('current,size,refused', [
    (2, 1, True), (2, 2, False), (2, 3, False), (None, 1, False),
    (2, None, False), (0, 1, False)])
def test_check_no_shrink(current, size, refused):
    if refused:
        with pytest.raises(exception.CannotShrink) as e:
            flows.check_no_shrink('/p', current, size)
        assert '/p' in str(e.value)
    else:
        flows.check_no_shrink('/p', current, size)


def test_cli_uses_the_flows_check(monkeypatch):
    calls = []
    monkeypatch.setattr(flows, 'check_no_shrink',
                        lambda *a: calls.append(a))
    flavor = types.SimpleNamespace(root_gb=1, ephemeral_gb=2)
    instance = types.SimpleNamespace(uuid='u', flavor=flavor)
    record = types.SimpleNamespace(name='disk', location='/l', virtual_size=5)
    backend = types.SimpleNamespace(records=types.SimpleNamespace(
        list=lambda uuid: [record]))
    cli._check_no_shrink(backend, instance, instance)
    assert calls == [('/l', 5, 1 << 30)]
