"""Counter semantics, pure: deltas between scrapes, restarts, gaps, several models."""

import random

import pytest

from meterd.probes.counters import CounterTracker, Counts, Gap, Totals


def totals(**models) -> Totals:
    return Totals("vllm", {m: Counts(*v) if isinstance(v, tuple) else v for m, v in models.items()})


def test_first_scrape_is_a_baseline_then_deltas():
    t = CounterTracker()
    first = t.update("s", totals(a=(1000, 200)))
    assert first.baseline and first.deltas == {} and first.gap is None
    u = t.update("s", totals(a=(1100, 230)))
    assert u.deltas == {"a": Counts(100, 30)}
    assert (u.prompt_tokens, u.completion_tokens) == (100, 30)
    assert not u.baseline and not u.restarted


def test_several_models_are_independent():
    t = CounterTracker()
    t.update("s", totals(a=(10, 1), b=(500, 50)))
    u = t.update("s", totals(a=(15, 3), b=(500, 50)))
    assert u.deltas == {"a": Counts(5, 2), "b": Counts(0, 0)}


def test_several_servers_are_independent():
    t = CounterTracker()
    t.update("x", totals(a=(10, 1)))
    assert t.update("y", totals(a=(99, 9))).baseline
    assert t.update("x", totals(a=(12, 2))).deltas == {"a": Counts(2, 1)}


def test_a_counter_that_goes_down_is_a_restart_counted_from_zero():
    t = CounterTracker()
    t.update("s", totals(a=(1000, 400)))
    before = t.update("s", totals(a=(1200, 450)))
    after = t.update("s", totals(a=(70, 20)))  # restarted, then served 70 + 20 tokens
    assert before.deltas["a"] == Counts(200, 50)
    assert after.deltas["a"] == Counts(70, 20)
    assert after.restarted == {"a"}
    # and it goes on from the new origin
    assert t.update("s", totals(a=(100, 25))).deltas["a"] == Counts(30, 5)


def test_one_counter_down_means_all_of_the_model_restarted():
    """The completion counter climbed past its old value after the restart: still one restart."""
    t = CounterTracker()
    t.update("s", totals(a=(1000, 10)))
    u = t.update("s", totals(a=(30, 50)))
    assert u.restarted == {"a"} and u.deltas["a"] == Counts(30, 50)


def test_seconds_going_down_is_a_restart_too():
    t = CounterTracker()
    t.update("s", totals(a=Counts(100, 10, prefill_s=5.0, decode_s=9.0)))
    u = t.update("s", totals(a=Counts(120, 12, prefill_s=0.5, decode_s=1.0)))
    assert u.restarted == {"a"} and u.deltas["a"] == Counts(120, 12, prefill_s=0.5, decode_s=1.0)


def test_a_restart_of_one_model_leaves_the_others():
    t = CounterTracker()
    t.update("s", totals(a=(100, 10), b=(100, 10)))
    u = t.update("s", totals(a=(5, 1), b=(130, 14)))
    assert u.restarted == {"a"}
    assert u.deltas == {"a": Counts(5, 1), "b": Counts(30, 4)}


def test_a_gap_is_never_zero_and_the_next_delta_covers_it():
    t = CounterTracker()
    t.update("s", totals(a=(100, 10)))
    gap = t.update("s", Gap("http://127.0.0.1:1/metrics: timed out after 2 s", "unreachable"))
    assert gap.gap is not None and "timed out" in gap.gap.reason
    assert gap.deltas == {}  # not {"a": Counts(0, 0)}: nothing is known about the interval
    assert t.update("s", totals(a=(160, 19))).deltas == {"a": Counts(60, 9)}


def test_a_gap_before_the_first_scrape_leaves_no_origin():
    t = CounterTracker()
    assert t.update("s", Gap("refused")).gap == Gap("refused")
    assert t.update("s", totals(a=(100, 10))).baseline


def test_a_model_missing_from_one_scrape_keeps_its_origin():
    t = CounterTracker()
    t.update("s", totals(a=(100, 10), b=(50, 5)))
    u = t.update("s", totals(a=(110, 11)))
    assert u.deltas == {"a": Counts(10, 1)}
    assert t.update("s", totals(a=(110, 11), b=(80, 9))).deltas["b"] == Counts(30, 4)


def test_a_new_model_on_a_known_server_counts_from_zero():
    t = CounterTracker()
    t.update("s", totals(a=(100, 10)))
    u = t.update("s", totals(a=(100, 10), b=(40, 4)))
    assert u.new_models == {"b"} and u.deltas["b"] == Counts(40, 4)


def test_optional_fields_appearing_and_vanishing():
    t = CounterTracker()
    t.update("s", totals(a=Counts(100, 10)))
    # prefill seconds appear (first request created the histogram's labels): count from zero
    assert t.update("s", totals(a=Counts(110, 12, prefill_s=0.25))).deltas["a"] == Counts(10, 2, prefill_s=0.25)
    # one scrape without them: None, and the last value is kept for the next comparison
    assert t.update("s", totals(a=Counts(120, 13))).deltas["a"] == Counts(10, 1)
    assert t.update("s", totals(a=Counts(130, 14, prefill_s=0.75))).deltas["a"].prefill_s == pytest.approx(0.5)


def test_float_noise_on_an_idle_seconds_counter_never_goes_negative():
    t = CounterTracker()
    t.update("s", totals(a=Counts(1, 1, prefill_s=0.1 + 0.2)))
    u = t.update("s", totals(a=Counts(1, 1, prefill_s=0.30000000000000004)))
    assert u.deltas["a"].prefill_s >= 0


def test_tokens_are_conserved_across_many_restarts_and_gaps():
    """The deltas add up to exactly the tokens the server made after the baseline, through
    restarts and gaps, and none is negative. What no scraper can see is left out by
    construction: tokens made between the last scrape and a restart die with the process, and
    a restart whose new count already passed the old one looks like no restart at all; so the
    simulated server restarts only right after a good scrape, with counts above one interval's
    worth."""
    rng = random.Random(7)
    t = CounterTracker()
    counter_p = counter_c = 5_000  # history before the agent looked
    t.update("s", totals(a=(counter_p, counter_c)))
    made_p = made_c = seen_p = seen_c = restarts = gaps = 0
    last_was_gap = False
    for _ in range(2_000):
        if not last_was_gap and counter_p >= 300 and counter_c >= 100 and rng.random() < 0.05:
            counter_p = counter_c = 0
            restarts += 1
        p, c = rng.randrange(0, 300), rng.randrange(0, 100)
        counter_p, counter_c = counter_p + p, counter_c + c
        made_p, made_c = made_p + p, made_c + c
        last_was_gap = rng.random() < 0.1
        if last_was_gap:
            gaps += 1
            assert t.update("s", Gap("down")).deltas == {}
            continue
        d = t.update("s", totals(a=(counter_p, counter_c))).deltas["a"]
        assert d.prompt_tokens >= 0 and d.completion_tokens >= 0
        seen_p, seen_c = seen_p + d.prompt_tokens, seen_c + d.completion_tokens
    if last_was_gap:  # one last good scrape collects what the final gap held
        d = t.update("s", totals(a=(counter_p, counter_c))).deltas["a"]
        seen_p, seen_c = seen_p + d.prompt_tokens, seen_c + d.completion_tokens
    assert restarts > 20 and gaps > 50
    assert (seen_p, seen_c) == (made_p, made_c)


def test_forget_and_last_totals():
    t = CounterTracker()
    assert t.last_totals("s") is None
    t.update("s", totals(a=(1, 2)))
    assert t.last_totals("s") == {"a": Counts(1, 2)}
    t.forget("s")
    assert t.update("s", totals(a=(5, 5))).baseline


@pytest.mark.parametrize("bad", [
    dict(prompt_tokens=-1, completion_tokens=0),
    dict(prompt_tokens=1.5, completion_tokens=0),
    dict(prompt_tokens=True, completion_tokens=0),
    dict(prompt_tokens=1, completion_tokens=1, prefill_s=float("nan")),
    dict(prompt_tokens=1, completion_tokens=1, decode_s=-0.1),
    dict(prompt_tokens=1, completion_tokens=1, cached_tokens=-3),
])
def test_counts_reject_what_is_not_a_count(bad):
    with pytest.raises(ValueError):
        Counts(**bad)
