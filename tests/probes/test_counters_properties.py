"""Token counter deltas (probes/counters.py), property-based: never negative; over a climbing
counter the deltas add up to exactly what the server counted since the first look, however
many scrapes failed in between; a restart counts its new tokens whole."""

from hypothesis import given
from hypothesis import strategies as st

from meterd.probes.counters import CounterTracker, Counts, Gap, Totals
from tests.strategies import BOUNDED

MODELS = ("a", "b", "c")
tokens = st.integers(0, 10**9)
seconds = st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False))


def counts(p, c, pre=None, dec=None):
    return Counts(p, c, pre, dec)


@st.composite
def anything(draw):
    """Any sequence of scrapes, counters going up or down at random, gaps anywhere."""
    out = []
    for _ in range(draw(st.integers(1, 15))):
        if draw(st.integers(0, 4)) == 0:
            out.append(Gap("down"))
        else:
            models = draw(st.sets(st.sampled_from(MODELS)))
            out.append(Totals("vllm", {m: counts(draw(tokens), draw(tokens), draw(seconds), draw(seconds))
                                       for m in sorted(models)}))
    return out


@BOUNDED
@given(anything())
def test_deltas_are_never_negative_and_gaps_report_nothing(scrapes):
    tr = CounterTracker()
    seen_good = False
    for s in scrapes:
        u = tr.update("srv", s)
        if isinstance(s, Gap):
            assert u.gap is s and not u.deltas
            continue
        assert u.baseline == (not seen_good)
        seen_good = True
        for d in u.deltas.values():
            assert d.prompt_tokens >= 0 and d.completion_tokens >= 0
            assert d.prefill_s is None or d.prefill_s >= 0
            assert d.decode_s is None or d.decode_s >= 0
        assert u.prompt_tokens == sum(d.prompt_tokens for d in u.deltas.values())


@st.composite
def climbing(draw):
    """A server's counters that only climb; each model appears at some scrape and stays
    (a scrape may still miss it); gaps anywhere but the first scrape. Returns the scrapes."""
    n = draw(st.integers(1, 30))
    born = {m: draw(st.integers(0, n - 1)) for m in MODELS}
    tot = {m: [0, 0] for m in MODELS}
    out = []
    for i in range(n):
        for m in MODELS:  # the server counts whether or not the scrape gets through
            if i >= born[m]:
                tot[m][0] += draw(st.integers(0, 10**6))
                tot[m][1] += draw(st.integers(0, 10**6))
        if i and draw(st.integers(0, 4)) == 0:
            out.append(Gap("timed out"))
            continue
        out.append(Totals("vllm", {m: counts(*tot[m]) for m in MODELS
                                   # a scrape may miss a model (not yet born, or left out)
                                   if i >= born[m] and (i == 0 or draw(st.integers(0, 5)))}))
    return out


@BOUNDED
@given(climbing())
def test_a_climbing_counter_adds_up_exactly_across_gaps(scrapes):
    tr = CounterTracker()
    got = {m: [0, 0] for m in MODELS}
    first = scrapes[0].models  # the baseline: what the server did before we looked
    last: dict[str, Counts] = {}
    for s in scrapes:
        u = tr.update("srv", s)
        assert not u.restarted
        for m, d in u.deltas.items():
            got[m][0] += d.prompt_tokens
            got[m][1] += d.completion_tokens
        if isinstance(s, Totals):
            last.update(s.models)
    for m, c in last.items():
        origin = first.get(m, Counts(0, 0))  # a model first seen later counts from zero
        assert got[m] == [c.prompt_tokens - origin.prompt_tokens, c.completion_tokens - origin.completion_tokens]


@BOUNDED
@given(st.lists(st.tuples(tokens, tokens), min_size=2, max_size=20), st.data())
def test_a_restart_counts_the_new_value_whole(values, data):
    tr = CounterTracker()
    tr.update("srv", Totals("vllm", {"m": counts(*values[0])}))
    prev = values[0]
    for p, c in values[1:]:
        u = tr.update("srv", Totals("vllm", {"m": counts(p, c)}))
        d = u.deltas["m"]
        if p < prev[0] or c < prev[1]:  # any counter down: the server restarted
            assert "m" in u.restarted and (d.prompt_tokens, d.completion_tokens) == (p, c)
        else:
            assert not u.restarted and (d.prompt_tokens, d.completion_tokens) == (p - prev[0], c - prev[1])
        prev = (p, c)
