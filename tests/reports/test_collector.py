"""`meter report --collector`: the same fleet sent as CloudEvents to a real collector on
127.0.0.1, read back through its query API, and the errors of a collector that is down or
refuses the token."""

import json
import socket

import pytest
from click.testing import CliRunner

from meterd.agent.cli import main
from meterd.agent.events import window_event
from meterd.collector.auth import create_token
from meterd.collector.store import SQLiteStore
from meterd.collector.validation import check_batch
from meterd.reports.aggregate import aggregate
from meterd.reports.query import CollectorDown, CollectorRefused, Filters, read_collector, read_store
from tests.collector.conftest import LiveServer
from tests.reports.conftest import fleet_windows


@pytest.fixture
def cstore(tmp_path):
    s = SQLiteStore(tmp_path / "collector.db")
    yield s
    s.close()


@pytest.fixture
def server(cstore):
    parsed, errors = check_batch([window_event(w, u) for w, u in fleet_windows()])
    assert errors == []
    assert cstore.ingest(parsed).accepted == 5
    with LiveServer(cstore) as srv:
        yield srv


@pytest.fixture
def read_token(cstore):
    return create_token(cstore, "finance", scope="read")


def token_file(path, token):
    """A token file as the shipper's rules want it: mode 0600."""
    path.write_text(token)
    path.chmod(0o600)
    return path


def keyed(rep, field):
    return {tuple(r[k] for k in rep.by): r[field] for r in rep.rows}


@pytest.mark.parametrize("by", [["model"], ["model", "device"], ["node"], ["tenant"], ["hour"],
                                ["day"], ["week", "node"]])
def test_collector_reports_match_the_local_store(server, read_token, fleet, by):
    remote = aggregate(read_collector(server.url, read_token, by, Filters()), by)
    local = aggregate(read_store(fleet, by, Filters()), by)
    for field in ("cost_micro", "prompt_tokens", "completion_tokens", "cost_prompt_micro",
                  "cost_completion_micro", "idle_cost_micro"):
        assert keyed(remote, field) == keyed(local, field), field
    assert remote.totals["cost_micro"] == 9300 == sum(r["cost_micro"] for r in remote.rows)
    assert remote.totals["energy_j"] == pytest.approx(32_000.0)


def test_collector_filters(server, read_token):
    rep = aggregate(read_collector(server.url, read_token, ["device"], Filters(node="n2", model="a")),
                    ["device"], model="a")
    assert keyed(rep, "cost_micro") == {("GPU-0",): 1500}


def test_cli_over_a_collector(server, read_token, tmp_path):
    tf = token_file(tmp_path / "token", read_token + "\n")
    r = CliRunner().invoke(main, ["report", "--collector", server.url, "--token-file", str(tf),
                                  "--format", "json", "--by", "model"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["totals"]["cost_micro"] == 9300 and out["source"] == server.url
    assert {row["model"]: row["cost_micro"] for row in out["rows"]} == {"a": 3700, "b": 4800, "(idle)": 800}


def test_a_refused_token_is_one_clear_line(server, cstore, tmp_path):
    with pytest.raises(CollectorRefused, match=r"refused the token \(401\): missing or unknown bearer token"):
        read_collector(server.url, "mtk_000000000000_" + "A" * 43, ["model"], Filters())
    node_token = create_token(cstore, "n1")
    with pytest.raises(CollectorRefused, match=r"\(403\): a token for node 'n1' may not read node 'n2'"):
        read_collector(server.url, node_token, ["model"], Filters(node="n2"))
    tf = token_file(tmp_path / "token", "mtk_nope")
    r = CliRunner().invoke(main, ["report", "--collector", server.url, "--token-file", str(tf)])
    assert r.exit_code == 1 and r.output.startswith("Error: the collector at") and "(401)" in r.output


def test_a_collector_that_is_down(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(CollectorDown, match=f"cannot reach the collector at http://127.0.0.1:{port}"):
        read_collector(f"http://127.0.0.1:{port}", "t", ["model"], Filters(), timeout=2)
    tf = token_file(tmp_path / "token", "t")
    r = CliRunner().invoke(main, ["report", "--collector", f"http://127.0.0.1:{port}", "--token-file", str(tf)])
    assert r.exit_code == 1 and r.output.startswith(f"Error: cannot reach the collector at http://127.0.0.1:{port}")


def test_an_empty_collector_and_a_missing_token_file(cstore, tmp_path):
    token = create_token(cstore, "finance", scope="read")
    with LiveServer(cstore) as srv:
        r = CliRunner().invoke(main, ["report", "--collector", srv.url, "--token-file", str(tmp_path / "none")])
        assert r.exit_code == 1 and f"token file {tmp_path / 'none'}: not found" in r.output
        r = CliRunner().invoke(main, ["report", "--collector", srv.url])
        assert r.exit_code == 1 and "--collector needs --token-file FILE" in r.output
        tf = token_file(tmp_path / "token", token)
        r = CliRunner().invoke(main, ["report", "--collector", srv.url, "--token-file", str(tf)])
        assert r.exit_code == 1 and r.output.strip() == "Error: the collector has no windows at all"


def test_html_over_a_collector_has_its_charts_and_says_why_there_is_no_roofline(server, read_token, tmp_path):
    tf = token_file(tmp_path / "token", read_token)
    page = tmp_path / "r.html"
    r = CliRunner().invoke(main, ["report", "--collector", server.url, "--token-file", str(tf),
                                  "--format", "html", "-o", str(page)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    text = page.read_text()
    assert text.count("<svg") == 3 and "no bench results" in text and f"source: {server.url}" in text


def test_other_collector_answers_are_one_line_too():
    import httpx

    from meterd.reports.query import QueryError

    def proxy(request):
        return httpx.Response(502, text="Bad Gateway\n<html>...</html>")

    with pytest.raises(QueryError, match=r"^the collector at http://c answered 502: Bad Gateway$"):
        read_collector("http://c", "t", ["model"], Filters(), transport=httpx.MockTransport(proxy))
    with pytest.raises(QueryError, match="did not answer with usage groups"):
        read_collector("http://c", "t", ["model"], Filters(),
                       transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"x": 1})))


def test_the_read_token_is_held_to_the_shippers_rules(server, read_token, tmp_path):
    from meterd.agent.shipper import ShipError, check_url

    tf = tmp_path / "token"
    tf.write_text(read_token)
    tf.chmod(0o640)  # a read token reads every node: group-readable is refused, before any request
    r = CliRunner().invoke(main, ["report", "--collector", server.url, "--token-file", str(tf)])
    assert r.exit_code == 1 and r.output.strip() == (
        f"Error: token file {tf} is accessible to group or others (mode 0640): run chmod 600 {tf}")
    # plain http to anything but loopback is refused before anything connects (checked here
    # without the CLI, so that no test hands a non-loopback address to code that might connect)
    with pytest.raises(ShipError, match=r"^--collector 'http://collector.example:8650': plain http to a "
                                        r"non-loopback host is refused \(the token would cross the network"):
        check_url("http://collector.example:8650", what="--collector", expected="https://HOST[:PORT]",
                  insecure_hint="")
    tf.chmod(0o600)
    r = CliRunner().invoke(main, ["report", "--collector", server.url, "--token-file", str(tf),
                                  "--ca-file", str(tmp_path / "ca.pem")])
    assert r.exit_code == 1 and r.output.strip() == f"Error: --ca-file {tmp_path / 'ca.pem'}: not found"
    r = CliRunner().invoke(main, ["report", "--ca-file", str(tmp_path / "ca.pem")])
    assert r.exit_code == 1 and "--ca-file, --client-cert and --client-key go with --collector URL" in r.output
