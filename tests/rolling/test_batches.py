"""How rolling runs its sets of lanes: which degenerate fits warm mode tries to escape, the
padding lanes of a call, and how a call's groups are dealt to the devices (no fits run)."""

from types import SimpleNamespace

import numpy as np
import pytest

import ssjax.rolling.batches as batches
from ssjax.rolling.batches import ESCAPE_STRIDE, _batched, _dealt, _escape, _idle
from ssjax.rolling.devices import _mesh
from ssjax.rolling.kernels import NO_LIMIT, _zero_offsets


@pytest.fixture
def escapes(monkeypatch):
    """``_escape`` with the degenerate fits and the escape outcomes given: returns a function
    (degenerate mask, chain, pos, lanes that escape) -> (tried per call, return value)."""

    def run(deg, chain, pos, wins):
        calls = []

        def fake_lanes(run_, r, full, cap, cs, es, idx):
            calls.append(np.asarray(idx).tolist())
            return np.isin(idx, wins)

        monkeypatch.setattr(batches, "_degenerate_lanes", lambda r, t: np.asarray(deg, bool))
        monkeypatch.setattr(batches, "_escape_lanes", fake_lanes)
        run_ = SimpleNamespace(template=None)
        n = len(deg)
        out = _escape(run_, {}, None, 8, np.zeros(n), np.zeros(n), chain, pos)
        return calls, out

    return run


def _two_commodities():
    """(degenerate, chain, pos) of 2 commodities x 20 windows, lanes commodity-major as warm
    mode passes them: commodity 0's windows 0..19 are degenerate (one run of 20), commodity
    1's 3..5 and 7 (two runs: 6 is not degenerate)."""
    chain = np.repeat([0, 1], 20)
    pos = np.tile(np.arange(20), 2)
    deg = np.zeros(40, bool)
    deg[:20] = True
    deg[[23, 24, 25, 27]] = True
    return deg, chain, pos


def test_warm_escapes_try_every_eighth_window_of_a_run_and_its_last(escapes):
    calls, (won, skipped) = escapes(*_two_commodities(), wins=[])
    assert ESCAPE_STRIDE == 8
    assert calls[0] == [0, 8, 16, 19, 23, 25, 27]  # every 8th of a run and its last
    assert calls[1] == []  # nothing escaped, so no run is tried in full
    assert (won, skipped) == (0, 24 - 7)


def test_a_run_with_an_escape_is_tried_in_full(escapes):
    # window 8 of commodity 0 escapes, and then so do windows 5 and 9 of its run
    calls, (won, skipped) = escapes(*_two_commodities(), wins=[8, 5, 9])
    assert calls[1] == [i for i in range(20) if i not in (0, 8, 16, 19)]
    assert (won, skipped) == (3, 1)  # only commodity 1's window 4 (lane 24) is not tried


def test_without_a_chain_every_degenerate_fit_is_tried(escapes):
    deg = np.array([True, True, False, True])
    calls, out = escapes(deg, None, None, wins=[3])
    assert calls == [[0, 1, 3]]
    assert out == (1, 0)


def test_dealt_gives_the_devices_groups_in_turn():
    d = _dealt(16, 2, 2)
    assert sorted(d) == list(range(16))
    # device 0 holds the first half of the call: groups 0, 2, 4, 6 of the logical order
    assert d[:8].tolist() == [0, 1, 4, 5, 8, 9, 12, 13]
    assert _dealt(12, 4, 1).tolist() == list(range(12))


def test_padding_lanes_idle_and_lanes_come_back_in_order():
    off = _zero_offsets(6, np.float64)
    lim = _idle(off, 4)[3]
    assert lim.tolist() == [NO_LIMIT] * 4 + [0, 0]
    assert _idle(off, np.array([1, 0, 1, 1, 0, 1], bool))[3].tolist()[1] == 0

    seen = {}

    def prog(stack, cs, es, payload, use, o):
        seen["limit"] = np.asarray(o[3])
        seen["cs"] = np.asarray(cs)
        return {"cs": cs, "es": es}

    # 5 lanes in a call of 8 (2 devices x groups of 2: the mesh here has one device, which
    # takes any lane count; the dealing is the host's)
    run = SimpleNamespace(unit=4, width=2, n_dev=2, mesh=_mesh(1), stack_dev=None)
    cs = np.arange(5) + 10
    es = np.arange(5) + 100
    extra = (np.ones(5, bool), _zero_offsets(5, float))
    (out,) = _batched(run, prog, 8, cs, es, np.zeros(5), extra, idle_pad=True)
    assert out["cs"].tolist() == cs.tolist() and out["es"].tolist() == es.tolist()
    # the call saw the lanes dealt: groups 0, 2 | 1, 3; padding (copies of lane 0) idle
    assert seen["cs"].tolist() == [10, 11, 14, 10, 12, 13, 10, 10]
    assert seen["limit"].tolist() == [NO_LIMIT, NO_LIMIT, NO_LIMIT, 0, NO_LIMIT, NO_LIMIT, 0, 0]
