"""agent/attribution.py: a shared GPU's window split by SM-busy share, exactly."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.agent.attribution import APPORTIONED, IDLE, busy_weights, split_by_owner
from meterd.agent.costmodel import Cost, allocate


def test_thirty_fifty_and_the_idle_twenty():
    w, span = busy_weights({"source:vllm": 30, "source:sglang": 50}, 60_000_000)
    parts = split_by_owner(Cost(1_000_000, 500_000, 250_000), 6000.0, w, span)
    assert [(p.owner, p.share) for p in parts] == [("source:sglang", 0.5), ("source:vllm", 0.3), (IDLE, 0.2)]
    assert [(p.capex_micro, p.energy_micro, p.opex_micro) for p in parts] == [
        (500_000, 250_000, 125_000), (300_000, 150_000, 75_000), (200_000, 100_000, 50_000)]
    assert [p.energy_j for p in parts] == [3000.0, 1800.0, 1200.0]
    assert all(p.provenance == APPORTIONED for p in parts)


def test_uneven_totals_split_by_largest_remainder():
    w, span = busy_weights({"a": 30, "b": 50}, 1)
    parts = split_by_owner(Cost(7, 5, 1), 0.001, w, span)
    assert sum(p.cost_micro for p in parts) == 13
    assert [p.cost_micro for p in parts] == allocate(13, [30, 50, 20])
    assert sum(p.energy_j * 1000 for p in parts) == 1


def test_overlapping_processes_leave_no_idle_share():
    parts = split_by_owner(Cost(100, 0, 0), None, {"a": 70 * 10, "b": 60 * 10}, 100 * 10)
    assert [p.owner for p in parts] == ["a", "b"] and all(p.energy_j is None for p in parts)
    assert sum(p.cost_micro for p in parts) == 100


def test_nothing_to_split_by():
    assert split_by_owner(Cost(1, 1, 1), 1.0, {}, 0) == []
    assert [p.owner for p in split_by_owner(Cost(1, 1, 1), 1.0, {}, 100)] == [IDLE]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9),
       st.dictionaries(st.text(min_size=1, max_size=3), st.integers(0, 100), max_size=5),
       st.integers(1, 10**7), st.floats(0, 1e7, allow_nan=False))
def test_every_split_adds_up_component_by_component(capex, energy, opex, pcts, dt, joules):
    w, span = busy_weights(pcts, dt)
    parts = split_by_owner(Cost(capex, energy, opex), joules, w, span)
    assert sum(p.capex_micro for p in parts) == capex
    assert sum(p.energy_micro for p in parts) == energy
    assert sum(p.opex_micro for p in parts) == opex
    assert all(p.capex_micro >= 0 and p.energy_micro >= 0 and p.opex_micro >= 0 for p in parts)
    assert sum(round(p.energy_j * 1000) for p in parts) == round(joules * 1000)
