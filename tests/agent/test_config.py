import json
import tomllib

import pytest
from click.testing import CliRunner

from meterd.agent.cli import main
from meterd.agent.config import EXAMPLE, ConfigError, default_config, parse_config, parse_source_flag, to_micro


def check(tmp_path, text):
    p = tmp_path / "meterd.toml"
    p.write_text(text)
    return CliRunner().invoke(main, ["config", "check", str(p)])


@pytest.mark.parametrize("text, message", [
    ('interval_s = "fast"\n', "interval_s: expected a number, got str 'fast'"),
    ("[prices]\ncapx_per_gpu = 1\n", "prices.capx_per_gpu: unknown key (did you mean 'capex_per_gpu'?)"),
    ("[prices]\nenergy_per_kwh = -0.1\n", "prices.energy_per_kwh: a price cannot be negative, got -0.1"),
    ("[prices]\npue = 0.8\n", "prices.pue: must be from 1 to 10 (facility power over IT power), got 0.8"),
    ("[prices]\npue = 1e6\n", "prices.pue: must be from 1 to 10"),
    ("[prices]\ncapex_per_gpu = 1e300\n", "prices.capex_per_gpu: 1e+300 is beyond any real price"),
    ("[prices]\nenergy_per_kwh = 1e12\n", "prices.energy_per_kwh: 1e+12 is beyond any real price"),
    ("[prices]\nenergy_per_kwh = 1e-9\n", "less than a micro-unit"),
    ("[prices]\ndepreciation_years = 1e-300\n", "prices.depreciation_years: must be from 0.1 to 100 years"),
    ("[prices]\ndepreciation_years = 0\n", "prices.depreciation_years: must be from 0.1 to 100 years"),
    ("[prices]\ncurrency = \"usd\"\n", "ISO 4217 currency code such as USD, EUR or JPY (codes are upper case)"),
    ("[prices]\ncurrency = \"DOLLARS\"\n", "prices.currency: expected an ISO 4217"),
    ("store_max_pending_windows = 0\n", "store_max_pending_windows: expected a whole number from 1"),
    ("[push]\nlisten = \"0.0.0.0:9465\"\n", "push.listen: the push endpoint listens on loopback"),
    ("[push]\nlisten = \"127.0.0.1:99999\"\n", "port"),
    ("[metrics]\nlisten = \"not-an-ip:9464\"\n", "metrics.listen: 'not-an-ip' is not an IP address"),
    ("[ship]\nurl = \"http://192.0.2.1:8650/api/v1/events\"\ntoken_file = \"t\"\n", "ship.url: "),
    ("[ship]\nurl = \"https://collector.example:8650/api/v1/events\"\n", "ship.token_file: shipping needs a bearer token"),
    ("[ship]\nurl = \"https://collector.example:8650/api/v1/events\"\ntoken_file = \"/nonexistent/t\"\n", "ship.token_file: token file"),
    ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
    ("a = " + "{b = " * 3000 + "1" + "}" * 3000 + "\n", "nested"),
    ("window_s = 7\n", "window_s: must divide an hour evenly"),
    ("[[sources]]\nkind = \"vlm\"\nurl = \"http://x\"\n", "sources[0].kind: expected one of vllm"),
    ("[[sources]]\nkind = \"vllm\"\n", "sources[0].url: expected a non-empty string"),
    ("[[prices.tariff]]\nstart = \"25:00\"\nend = \"01:00\"\nenergy_per_kwh = 0.1\n", "prices.tariff[0].start: expected a time HH:MM"),
    ("[prices]\ntariff_timezone = \"Mars/Olympus\"\n", "prices.tariff_timezone: unknown time zone"),
    ("node = \n", "not valid TOML"),
])
def test_config_check_names_the_key_and_the_problem(tmp_path, text, message):
    r = check(tmp_path, text)
    assert r.exit_code != 0
    assert message in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_config_check_on_a_file_that_is_not_utf8_is_one_line(tmp_path):
    p = tmp_path / "meterd.toml"
    p.write_bytes(b"node = \"\xff\xfe\"\n")
    r = CliRunner().invoke(main, ["config", "check", str(p)])
    assert r.exit_code != 0 and "not UTF-8" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_the_agent_refuses_what_config_check_refuses(tmp_path):
    p = tmp_path / "meterd.toml"
    p.write_text("[push]\nlisten = \"0.0.0.0:9465\"\n")
    r = CliRunner().invoke(main, ["agent", "--config", str(p), "--duration", "1", "--db", str(tmp_path / "m.db")])
    assert r.exit_code != 0 and "push.listen: the push endpoint listens on loopback" in r.output


def test_the_agent_never_overflows_on_the_largest_prices_config_check_takes(tmp_path):
    """The bounds are what keeps a window's cost inside SQLite's INTEGER."""
    from meterd.agent.config import MAX_ENERGY_PER_KWH, MAX_MONEY
    from meterd.agent.costmodel import DeviceShare, window_cost

    cfg = parse_config({"prices": {"capex_per_gpu": MAX_MONEY, "capex_per_node": MAX_MONEY,
                                   "depreciation_years": 0.1, "energy_per_kwh": MAX_ENERGY_PER_KWH,
                                   "opex_per_node_month": MAX_MONEY, "pue": 10.0, "residual_fraction": 0}})
    # the most a device can draw (windows.MAX_DEVICE_POWER_W) over the longest window
    cost = window_cost(0.0, 3600.0, 100_000.0 * 3600, cfg.prices, DeviceShare.for_node(True, 1))
    assert 0 < cost.total_micro < 2**63


def test_config_check_missing_file(tmp_path):
    r = CliRunner().invoke(main, ["config", "check", str(tmp_path / "nope.toml")])
    assert r.exit_code != 0 and "config file not found" in r.output and "Traceback" not in r.output


def test_example_config_is_valid_and_init_writes_it(tmp_path):
    parse_config(tomllib.loads(EXAMPLE))
    p = tmp_path / "m.toml"
    r = CliRunner().invoke(main, ["config", "init", str(p)])
    assert r.exit_code == 0 and p.read_text() == EXAMPLE
    r = CliRunner().invoke(main, ["config", "init", str(p)])
    assert r.exit_code != 0 and "--force" in r.output
    r = CliRunner().invoke(main, ["config", "check", str(p)])
    assert r.exit_code == 0 and "ok" in r.output


def test_a_full_config_parses_money_exactly(tmp_path):
    text = """
node = "n1"
window_s = 30
[prices]
energy_per_kwh = 0.1
rental_per_gpu_hour = 2.35
[[prices.tariff]]
start = "22:00"
end = "06:00"
energy_per_kwh = 0.07
days = ["sat", "sun"]
[[sources]]
kind = "generic"
url = "http://127.0.0.1:9000/metrics"
prompt_metric = "in_tokens"
completion_metric = "out_tokens"
devices = [0, "1"]
"""
    r = check(tmp_path, text)
    assert r.exit_code == 0, r.output
    c = parse_config(tomllib.loads(text))
    assert c.prices.energy_per_kwh_micro == 100_000 and c.prices.rental_per_gpu_hour_micro == 2_350_000
    assert c.prices.tariff[0].start_min == 22 * 60 and c.prices.tariff[0].days == ("sat", "sun")
    assert c.sources[0].devices == ("0", "1")
    assert c.hash() != default_config(node="n1").hash()


def test_source_flag():
    s = parse_source_flag("vllm=http://127.0.0.1:8000/metrics")
    assert (s.kind, s.url, s.devices) == ("vllm", "http://127.0.0.1:8000/metrics", ("all",))
    with pytest.raises(ConfigError, match="KIND=URL"):
        parse_source_flag("vllm")
    assert to_micro(0.1) == 100_000


def test_agent_flags_override_and_windows_json(tmp_path):
    db = tmp_path / "m.db"
    r = CliRunner().invoke(main, ["agent", "--db", str(db), "--window", "1", "--interval", "0.2", "--duration", "1.5"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["windows", "--db", str(db), "--json"])
    rows = json.loads(r.output)
    assert rows and {"node", "device", "start", "end", "energy_j", "energy_source", "avg_power_w", "util_pct",
                     "prompt_tokens", "completion_tokens", "cost_micro", "cost_per_mtok", "partial",
                     "gap_s"} <= set(rows[0])
    assert all(w["cost_per_mtok"] is None and w["cost_micro"] >= 0 for w in rows)  # no tokens: undefined
    assert rows[0]["partial"] is True  # started mid-window
    r = CliRunner().invoke(main, ["windows", "--db", str(db), "--since", "yesterday"])
    assert r.exit_code != 0 and "is not a time" in r.output


@pytest.mark.parametrize("args, message", [
    (["--window", "7"], "--window: must divide an hour"),
    (["--source", "vllm"], "expected KIND=URL"),
    (["--interval", "5", "--window", "1"], "must not exceed the window"),
])
def test_agent_rejects_bad_flags(tmp_path, args, message):
    r = CliRunner().invoke(main, ["agent", "--db", str(tmp_path / "m.db"), "--duration", "1", *args])
    assert r.exit_code != 0 and message in r.output


def test_models_in_the_config_are_validated(tmp_path):
    r = check(tmp_path, "[models.tiny]\ntotal_params = 1e9\nlayers = 4\nkv_heads = 2\nhead_dim = 64\n")
    assert r.exit_code != 0 and "models.tiny.bytes_per_param: missing" in r.output
    r = check(tmp_path, "[models.tiny]\ntotal_params = 1e9\nlayers = 4\nkv_heads = 2\nhead_dim = 64\n"
                        "bytes_per_param = 2\ncolour = 1\n")
    assert r.exit_code != 0 and "models.tiny.colour: unknown key" in r.output


def test_bench_capacity_uses_the_configs_prices_and_models(tmp_path):
    from fractions import Fraction

    from meterd.agent.costmodel import DeviceShare, capacity_rate_micro_per_s

    cfg = tmp_path / "m.toml"
    cfg.write_text('[prices]\ncurrency = "EUR"\nenergy_per_kwh = 0.25\n'
                   "[models.tiny]\ntotal_params = 1e9\nlayers = 4\nkv_heads = 2\nhead_dim = 64\nbytes_per_param = 2\n")
    r = CliRunner().invoke(main, ["bench", "--tiny", "--json", "--device", "cpu", "--db", str(tmp_path / "b.db"),
                                  "--config", str(cfg), "--model", "tiny"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert [c["model"] for c in doc["capacity"]] == ["tiny"]
    cap = doc["capacity"][0]
    assert cap["currency"] == "EUR"
    # the cost per Mtok is the config's cost rate (a CPU-only node: the CPU carries the node) over
    # the roofline's tokens/s
    prices = parse_config(tomllib.loads(cfg.read_text())).prices
    rate = capacity_rate_micro_per_s(prices, DeviceShare.for_node(False, 0), cap["watts"])
    assert cap["cost_per_mtok_decode_micro"] == round(rate * 10**6 / Fraction(cap["decode_tokens_per_s"]))


def test_source_flag_takes_a_model_and_devices():
    from meterd.agent.config import ConfigError, parse_source_flag

    s = parse_source_flag("trtllm=http://127.0.0.1:8000/prometheus/metrics,model=llama-3.1-8b,devices=0,1")
    assert (s.kind, s.url, s.model, s.devices) == ("trtllm", "http://127.0.0.1:8000/prometheus/metrics",
                                                    "llama-3.1-8b", ("0", "1"))
    plain = parse_source_flag("vllm=http://127.0.0.1:8000/metrics")
    assert plain.model is None and plain.devices == ("all",)
    # two flags of one kind are two sources, each tracked by its own name
    assert parse_source_flag("vllm=http://127.0.0.1:8001/metrics").name != plain.name
    for bad in ("vllm=http://127.0.0.1:8000/metrics,model=", "vllm=http://127.0.0.1:8000/metrics,devices=",
                "vllm=http://x/metrics,model=a,model=b", "vllm"):
        with pytest.raises(ConfigError) as e:
            parse_source_flag(bad)
        assert "--source" in str(e.value) and "\n" not in str(e.value)


def test_cached_prompt_token_weight_is_a_price_between_0_and_1():
    from meterd.agent.config import ConfigError, parse_config

    assert parse_config({}).prices.cached_prompt_token_weight == 0.1
    assert parse_config({"prices": {"cached_prompt_token_weight": 0.5}}).prices.cached_prompt_token_weight == 0.5
    with pytest.raises(ConfigError, match="cached_prompt_token_weight"):
        parse_config({"prices": {"cached_prompt_token_weight": 1.5}})
