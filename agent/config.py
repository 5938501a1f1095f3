"""The agent's configuration: TOML, validated key by key.

``load_config(path)`` returns a :class:`Config` or raises :class:`ConfigError` naming the bad key
and why (``prices.pue: must be at least 1.0, got 0.8``). With no file at all, :func:`default_config`
gives a working agent on embedded storage. Money in the file is in currency units (TOML floats or
integers); it becomes integer micro-units here, through Decimal, so 0.1 stays 100000 exactly.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from meterd.errors import ConfigError
from meterd.net import parse_listen
from meterd.units import to_micro

SOURCE_KINDS = ("vllm", "sglang", "tgi", "llamacpp", "trtllm", "triton", "generic", "auto")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class TariffPeriod:
    """A time-of-use price: from ``start`` to ``end`` (local ``HH:MM`` in the tariff timezone,
    ``end`` may be past midnight), on ``days`` (all days when empty)."""

    start_min: int
    end_min: int
    energy_micro_per_kwh: int
    days: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prices:
    currency: str = "USD"
    capex_per_gpu_micro: int = to_micro(25_000)
    capex_per_node_micro: int = to_micro(10_000)
    residual_fraction: float = 0.10
    depreciation_years: float = 4.0
    rental_per_gpu_hour_micro: int = 0
    energy_per_kwh_micro: int = to_micro("0.12")
    pue: float = 1.3
    opex_per_node_month_micro: int = to_micro(300)
    prompt_token_weight: float = 0.25
    # A prompt token served from a prefix cache, relative to a prompt token that was computed.
    cached_prompt_token_weight: float = 0.1
    tariff_timezone: str = "UTC"
    tariff: tuple[TariffPeriod, ...] = ()


@dataclass(frozen=True)
class SourceConfig:
    kind: str
    url: str | None = None  # None for kinds "push" and "discover" (servers found on their own)
    name: str = ""
    devices: tuple[str, ...] = ("all",)
    model: str | None = None  # for servers that serve one unnamed model (TGI)
    prompt_metric: str | None = None  # generic kind
    completion_metric: str | None = None
    model_label: str | None = None


@dataclass(frozen=True)
class Config:
    node: str = field(default_factory=socket.gethostname)
    store: str | None = None  # None: the default path (systemd state dir or user data dir)
    interval_s: float = 1.0
    # How often token sources are scraped (they are also scraped in every round that closes a
    # window, so attribution stays exact). None: a quarter of the window, at least interval_s.
    tokens_interval_s: float | None = None
    window_s: int = 60
    samples_retention_days: float = 7.0
    store_budget_mb: float | None = None  # None: no bound
    store_max_pending_windows: int = 20_000  # closed windows held in memory while the store refuses writes
    prices: Prices = field(default_factory=Prices)
    sources: tuple[SourceConfig, ...] = ()
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # roofline profiles, by name
    push_listen: str | None = None
    metrics_listen: str | None = None
    otlp_endpoint: str | None = None  # OTLP/HTTP receiver (meterd[otlp]): http://127.0.0.1:4318
    otlp_interval_s: float = 60.0
    ship_url: str | None = None
    ship_token_file: str | None = None
    ship_allow_insecure: bool = False
    ship_backoff_cap_s: float = 300.0
    ship_ca_file: str | None = None  # a private CA to trust instead of the system's
    ship_client_cert: str | None = None  # mutual TLS: the node's certificate (PEM)
    ship_client_key: str | None = None  # and its private key (mode 0600), unless in the cert file
    # Billing sinks (meterd.agent.sinks): what the windows become, and for whom.
    ship_sink: str = "meterd"
    ship_subject: str | None = None  # untenanted and idle usage; None: the node
    ship_window_events: bool = False  # openmeter: window events beside the usage events
    ship_rate_per_s: float | None = None  # stripe: requests a second (None: the sink's default)
    ship_metrics: dict[str, str] = field(default_factory=dict)  # data field -> Lago code / Stripe event name
    ship_subscriptions: dict[str, str] = field(default_factory=dict)  # subject -> Lago external_subscription_id
    ship_customers: dict[str, str] = field(default_factory=dict)  # subject -> Stripe customer id

    def hash(self) -> str:
        """A short stable digest of the config, stamped on every window."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_config(**overrides: Any) -> Config:
    return dataclasses.replace(Config(), **overrides)


# -- validation -------------------------------------------------------------------------------


def _number(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {type(v).__name__} {v!r}")
    if v != v or v in (float("inf"), float("-inf")):
        raise ConfigError(f"{key}: must be a finite number, got {v!r}")
    return v


def _at_least(lo: float, inclusive: bool = True) -> Callable[[str, Any], float]:
    def check(key: str, v: Any) -> float:
        v = _number(key, v)
        if v < lo or (not inclusive and v == lo):
            raise ConfigError(f"{key}: must be {'at least' if inclusive else 'more than'} {lo:g}, got {v!r}")
        return v
    return check


def _whole(lo: int, hi: int) -> Callable[[str, Any], int]:
    def check(key: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ConfigError(f"{key}: expected a whole number from {lo:,} to {hi:,}, got {v!r}")
        return v
    return check


#: The largest amount of money a config may name, in currency units: a billion (10^15 micro-
#: units, within 2^53 so that every sum of windows stays exact and inside SQLite's INTEGER).
MAX_MONEY = 10**9


def _money(key: str, v: Any, hi: float = MAX_MONEY) -> int:
    v = _number(key, v)
    if v < 0:
        raise ConfigError(f"{key}: a price cannot be negative, got {v!r}")
    if v > hi:
        raise ConfigError(f"{key}: {v:g} is beyond any real price (at most {hi:,g})")
    micro = to_micro(v)
    if v > 0 and micro == 0:
        raise ConfigError(f"{key}: {v!r} is less than a micro-unit; prices are kept to 10^-6")
    return micro


def _money_up_to(hi: float) -> Callable[[str, Any], int]:
    return lambda key, v: _money(key, v, hi)


#: Per kWh and per GPU-hour, a price beyond these is a typo (and would overflow a window's cost).
MAX_ENERGY_PER_KWH = 10_000
MAX_RENTAL_PER_GPU_HOUR = 1_000_000


def _between(lo: float, hi: float, why: str = "") -> Callable[[str, Any], float]:
    def check(key: str, v: Any) -> float:
        v = _number(key, v)
        if not lo <= v <= hi:
            raise ConfigError(f"{key}: must be from {lo:g} to {hi:g}{why}, got {v!r}")
        return v
    return check


def _currency(key: str, v: Any) -> str:
    v = _string(key, v)
    if v not in ISO_4217:
        hint = " (codes are upper case)" if v.upper() in ISO_4217 else ""
        raise ConfigError(f"{key}: expected an ISO 4217 currency code such as USD, EUR or JPY{hint}, got {v!r}")
    return v


#: Active ISO 4217 currency codes (and XXX for "no currency").
ISO_4217 = frozenset("""
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD
CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD
GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT
LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR
NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP
STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XCG
XOF XPF YER ZAR ZMW ZWG XXX
""".split())


def _string(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{key}: expected a non-empty string, got {type(v).__name__} {v!r}")
    return v


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: expected true or false, got {v!r}")
    return v


def _fraction(key: str, v: Any) -> float:
    v = _number(key, v)
    if not 0 <= v < 1:
        raise ConfigError(f"{key}: must be in [0, 1), got {v!r}")
    return v


def _window(key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{key}: expected a whole number of seconds >= 1, got {v!r}")
    if 3600 % v:
        raise ConfigError(f"{key}: must divide an hour evenly (1, 2, 5, 10, 15, 30, 60, ... 3600), got {v}")
    return v


def _listen(key: str, v: Any) -> str:
    v = _string(key, v)
    if v.startswith("unix:") and len(v) > len("unix:"):
        return v
    try:
        parse_listen(v)
    except ValueError as e:
        raise ConfigError(f"{key}: {e} (or unix:/path)") from None
    return v


def _hhmm(key: str, v: Any) -> int:
    v = _string(key, v)
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", v)
    if not m or int(m[1]) > 24 or int(m[2]) > 59 or (int(m[1]) == 24 and int(m[2])):
        raise ConfigError(f"{key}: expected a time HH:MM, got {v!r}")
    return int(m[1]) * 60 + int(m[2])


def _timezone(key: str, v: Any) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    v = _string(key, v)
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{key}: unknown time zone {v!r}") from None
    return v


def _check_keys(section: str, table: dict, known: dict) -> None:
    for k in table:
        if k not in known:
            where = f"{section}.{k}" if section else k
            hint = difflib.get_close_matches(k, list(known), n=1)
            raise ConfigError(f"{where}: unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def _table(key: str, v: Any) -> dict:
    if not isinstance(v, dict):
        raise ConfigError(f"{key}: expected a table, got {type(v).__name__}")
    return v


_TOP = {
    "node": ("node", _string),
    "store": ("store", _string),
    "interval_s": ("interval_s", _between(0.05, 3600)),
    "tokens_interval_s": ("tokens_interval_s", _between(0.05, 3600)),
    "window_s": ("window_s", _window),
    "samples_retention_days": ("samples_retention_days", _between(0.001, 36525)),
    "store_budget_mb": ("store_budget_mb", _between(1, 1e9)),
    "store_max_pending_windows": ("store_max_pending_windows", _whole(1, 10_000_000)),
}
_PRICES = {
    "currency": ("currency", _currency),
    "capex_per_gpu": ("capex_per_gpu_micro", _money),
    "capex_per_node": ("capex_per_node_micro", _money),
    "residual_fraction": ("residual_fraction", _fraction),
    "depreciation_years": ("depreciation_years", _between(0.1, 100, " years")),
    "rental_per_gpu_hour": ("rental_per_gpu_hour_micro", _money_up_to(MAX_RENTAL_PER_GPU_HOUR)),
    "energy_per_kwh": ("energy_per_kwh_micro", _money_up_to(MAX_ENERGY_PER_KWH)),
    "pue": ("pue", _between(1.0, 10.0, " (facility power over IT power)")),
    "opex_per_node_month": ("opex_per_node_month_micro", _money),
    "prompt_token_weight": ("prompt_token_weight", _between(1e-6, 1e6)),
    "cached_prompt_token_weight": ("cached_prompt_token_weight", _between(0.0, 1.0)),
    "tariff_timezone": ("tariff_timezone", _timezone),
}
_SOURCE_KEYS = ("kind", "url", "name", "devices", "model", "prompt_metric", "completion_metric", "model_label")


def parse_config(doc: dict[str, Any]) -> Config:
    """A Config from a parsed TOML document. Raises ConfigError naming the key."""
    # [collector] is the collector's (`meter collector ... --config`), so one file can serve both
    known = dict(_TOP) | {"prices": None, "sources": None, "push": None, "metrics": None, "otlp": None, "ship": None,
                          "models": None, "collector": None}
    _check_keys("", doc, known)
    top = {attr: check(k, doc[k]) for k, (attr, check) in _TOP.items() if k in doc}
    if "interval_s" in top and top["interval_s"] > top.get("window_s", Config.window_s):
        raise ConfigError(f"interval_s: must not exceed window_s, got {top['interval_s']}")

    prices_doc = _table("prices", doc.get("prices", {}))
    _check_keys("prices", prices_doc, _PRICES | {"tariff": None})
    prices = {attr: check(f"prices.{k}", prices_doc[k]) for k, (attr, check) in _PRICES.items() if k in prices_doc}
    prices["tariff"] = tuple(_tariff(i, t) for i, t in enumerate(prices_doc.get("tariff", [])))

    sources = tuple(_source(i, s) for i, s in enumerate(_list("sources", doc.get("sources", []))))
    models = _models(_table("models", doc.get("models", {})))

    extra: dict[str, Any] = {}
    for section, keys in (("push", {"listen": "push_listen"}), ("metrics", {"listen": "metrics_listen"}),
                          ("otlp", {"endpoint": "otlp_endpoint", "interval_s": "otlp_interval_s"}),
                          ("ship", {"url": "ship_url", "token_file": "ship_token_file",
                                    "allow_insecure": "ship_allow_insecure",
                                    "backoff_cap_s": "ship_backoff_cap_s", "ca_file": "ship_ca_file",
                                    "client_cert": "ship_client_cert", "client_key": "ship_client_key",
                                    **_SHIP_BILLING})):
        table = _table(section, doc.get(section, {}))
        _check_keys(section, table, keys)
        if section == "ship":
            extra.update(_ship_billing(table))
        for k, attr in keys.items():
            if k in table and k not in _SHIP_BILLING:
                check = (_bool if k == "allow_insecure" else _listen if k == "listen"
                         else _between(0.1, 86400) if k in ("backoff_cap_s", "interval_s")
                         else _otlp_endpoint if section == "otlp" else _string)
                extra[attr] = check(f"{section}.{k}", table[k])
    return Config(**top, prices=Prices(**prices), sources=sources, models=models, **extra)


def _otlp_endpoint(key: str, v: Any) -> str:
    text = _string(key, v)
    from urllib.parse import urlsplit

    u = urlsplit(text)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"{key}: expected an OTLP/HTTP endpoint like http://127.0.0.1:4318, got {text!r}")
    return text


_SHIP_BILLING = {k: "ship_" + k for k in ("sink", "subject", "window_events", "rate_per_s", "metrics",
                                          "subscriptions", "customers")}


def parse_sink(key: str, v: Any) -> str:
    from meterd.agent.sinks import SINK_KINDS

    if v not in SINK_KINDS:
        raise ConfigError(f"{key}: expected one of {', '.join(SINK_KINDS)}, got {v!r}")
    return v


def _names(key: str, v: Any, *, fields: tuple[str, ...] | None = None, max_len: int = 255) -> dict[str, str]:
    """A table of strings to non-empty strings (``fields``: the keys allowed)."""
    v = _table(key, v)
    out = {}
    for k, name in v.items():
        if fields is not None and k not in fields:
            hint = difflib.get_close_matches(k, list(fields), n=1)
            raise ConfigError(f"{key}.{k}: not a billable field of meterd.usage.v1"
                              + (f" (did you mean {hint[0]!r}?)" if hint else f"; one of {', '.join(fields)}"))
        name = _string(f"{key}.{k}", name)
        if len(name) > max_len:
            raise ConfigError(f"{key}.{k}: at most {max_len} characters, got {len(name)}")
        out[k] = name
    return out


def _ship_billing(t: dict) -> dict[str, Any]:
    """The billing keys of ``[ship]``: the sink, the subject, the sink's metric names and the
    tenant -> subscription / customer tables."""
    from meterd.agent.usage_events import BILLABLE_FIELDS

    out: dict[str, Any] = {}
    sink = parse_sink("ship.sink", t["sink"]) if "sink" in t else "meterd"
    if "sink" in t:
        out["ship_sink"] = sink
    if "subject" in t:
        out["ship_subject"] = _string("ship.subject", t["subject"])
    if "window_events" in t:
        out["ship_window_events"] = _bool("ship.window_events", t["window_events"])
        if out["ship_window_events"] and sink != "openmeter":
            raise ConfigError("ship.window_events: only the openmeter sink sends window events beside "
                              f"usage events (sink is {sink!r})")
    if "rate_per_s" in t:
        out["ship_rate_per_s"] = _at_least(0.1)("ship.rate_per_s", t["rate_per_s"])
    if "metrics" in t:
        out["ship_metrics"] = _names("ship.metrics", t["metrics"], fields=BILLABLE_FIELDS, max_len=100)
        if not out["ship_metrics"]:
            raise ConfigError("ship.metrics: name at least one field (e.g. cost_micro = \"meterd_cost\")")
    for k in ("subscriptions", "customers"):
        if k in t:
            out[f"ship_{k}"] = _names(f"ship.{k}", t[k])
    return out


def _models(table: dict) -> dict[str, dict[str, Any]]:
    """``[models.NAME]`` tables: roofline profiles for `meter bench` and `meter report`."""
    from meterd.kernels.roofline import profile_from_dict

    out = {}
    for name, values in table.items():
        values = _table(f"models.{name}", values)
        try:
            profile_from_dict(name, values)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        out[name] = dict(values)
    return out


def _list(key: str, v: Any) -> list:
    if not isinstance(v, list):
        raise ConfigError(f"{key}: expected an array of tables ([[{key}]]), got {type(v).__name__}")
    return v


def _tariff(i: int, t: Any) -> TariffPeriod:
    key = f"prices.tariff[{i}]"
    t = _table(key, t)
    _check_keys(key, t, {"start": 0, "end": 0, "energy_per_kwh": 0, "days": 0})
    for req in ("start", "end", "energy_per_kwh"):
        if req not in t:
            raise ConfigError(f"{key}.{req}: missing")
    days = t.get("days", [])
    if not isinstance(days, list) or any(d not in DAYS for d in days):
        raise ConfigError(f"{key}.days: expected a list of {', '.join(DAYS)}, got {days!r}")
    start, end = _hhmm(f"{key}.start", t["start"]), _hhmm(f"{key}.end", t["end"])
    if start == end:
        raise ConfigError(f"{key}: start and end are the same time")
    return TariffPeriod(start, end, _money(f"{key}.energy_per_kwh", t["energy_per_kwh"], MAX_ENERGY_PER_KWH), tuple(days))


def _source(i: int, s: Any) -> SourceConfig:
    key = f"sources[{i}]"
    s = _table(key, s)
    _check_keys(key, s, dict.fromkeys(_SOURCE_KEYS))
    kind = s.get("kind")
    if kind not in (*SOURCE_KINDS, "push", "discover"):
        raise ConfigError(f"{key}.kind: expected one of {', '.join((*SOURCE_KINDS, 'push', 'discover'))}, got {kind!r}")
    url = s.get("url")
    if kind == "discover" and url is not None:
        raise ConfigError(f"{key}.url: kind \"discover\" finds its servers itself (no url)")
    if kind not in ("push", "discover"):
        url = _string(f"{key}.url", url)
        if not re.match(r"https?://", url):
            raise ConfigError(f"{key}.url: expected an http:// or https:// URL, got {url!r}")
    devices = s.get("devices", ["all"])
    if not isinstance(devices, list) or not devices or not all(isinstance(d, (str, int)) for d in devices):
        raise ConfigError(f"{key}.devices: expected a list of device indexes or UUIDs, or [\"all\"], got {devices!r}")
    if kind == "generic":
        for req in ("prompt_metric", "completion_metric"):
            _string(f"{key}.{req}", s.get(req))
    opt = {k: _string(f"{key}.{k}", s[k]) for k in ("name", "model", "prompt_metric", "completion_metric", "model_label") if k in s}
    opt.setdefault("name", f"{kind}-{i}")
    return SourceConfig(kind=kind, url=url, devices=tuple(str(d) for d in devices), **opt)


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a TOML config: byte {e.start} is not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror}") from None
    return parse_config(parse_toml(text, str(p)))


#: Tables and arrays in a config nest a few levels; a file deeper than this is not a config
#: (and would take the TOML parser to its recursion limit).
MAX_CONFIG_NESTING = 16


def parse_toml(text: str, where: str) -> dict[str, Any]:
    """TOML text to a document, or ConfigError with one line (deep nesting included)."""
    depth = _toml_nesting(text)
    if depth > MAX_CONFIG_NESTING:
        raise ConfigError(f"{where}: not a config: arrays or tables nested {depth} deep (at most {MAX_CONFIG_NESTING})")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML: {str(e).splitlines()[0]}") from None
    except (RecursionError, ValueError) as e:
        raise ConfigError(f"{where}: not a config TOML can read: {str(e).splitlines()[0][:120]}") from None


def _toml_nesting(text: str) -> int:
    """An upper bound on the nesting of a TOML text's inline arrays and tables (strings and
    comments are skipped roughly; a bracket in a string only ever overcounts)."""
    depth = deepest = 0
    for line in text.splitlines():
        line = re.sub(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'', "", line).split("#", 1)[0]
        if not line.strip() or re.match(r"\s*\[", line) and depth == 0 and "=" not in line:
            continue  # a [table] or [[array]] header
        for c in line:
            if c in "[{":
                depth += 1
                deepest = max(deepest, depth)
            elif c in "]}":
                depth = max(0, depth - 1)
    return deepest


_FLAG_OPTION = re.compile(r",(model|devices)=")


def parse_source_flag(text: str) -> SourceConfig:
    """``KIND=URL[,model=NAME][,devices=0,1]`` from the command line; maps to all devices unless
    ``devices`` says which. ``model`` names the model where the server names none or a
    placeholder (llama.cpp, TGI, trtllm-serve's "undefined")."""
    kind, sep, rest = text.partition("=")
    if not sep or not rest:
        raise ConfigError(f"--source: expected KIND=URL[,model=NAME][,devices=0,1], got {text!r}")
    parts = _FLAG_OPTION.split(rest)
    url, opts = parts[0], dict(zip(parts[1::2], parts[2::2]))
    if len(parts[1::2]) != len(opts):
        raise ConfigError(f"--source {text!r}: an option is given twice")
    doc: dict[str, Any] = {"kind": kind, "url": url, "name": f"{kind}={url}"}
    if "model" in opts:
        if not opts["model"]:
            raise ConfigError(f"--source {text!r}: model= needs a name")
        doc["model"] = opts["model"]
    if "devices" in opts:
        devices = [d for d in opts["devices"].split(",") if d]
        if not devices:
            raise ConfigError(f"--source {text!r}: devices= needs GPU indexes or UUIDs, e.g. devices=0,1")
        doc["devices"] = devices
    try:
        return _source(0, doc)
    except ConfigError as e:
        raise ConfigError(f"--source {text!r}: {str(e).removeprefix('sources[0].')}") from None


EXAMPLE = '''\
# meterd agent configuration. Every key is optional: with no file at all, the agent meters this
# node with the defaults below, on embedded storage. Money is in currency units.

# node = "gpu-node-17"               # default: the host name
# store = "/var/lib/meterd/meterd.db"  # default: $STATE_DIRECTORY/meterd.db under systemd,
#                                     #          else ~/.local/share/meterd/meterd.db
interval_s = 1.0                      # how often every probe is read
# tokens_interval_s = 15              # how often token sources are scraped (default: a quarter of
#                                     # the window); always also in the round that closes a window
window_s = 60                         # the billed window; must divide an hour (1 for tests)
samples_retention_days = 7            # raw samples are pruned after this; windows are kept
# store_budget_mb = 512               # bound the store: raw samples go first, then windows a sink
#                                     # has acknowledged (rollups stay); unshipped windows never
# store_max_pending_windows = 20000  # while the store refuses writes (disk full, locked by another
#                                     # process), closed windows wait in memory, up to this many;
#                                     # beyond it the oldest are dropped (logged, counted)

[prices]
currency = "USD"
capex_per_gpu = 25000.0               # purchase price of one accelerator
capex_per_node = 10000.0              # the rest of the server, shared by its GPUs
residual_fraction = 0.10              # value left at the end of depreciation
depreciation_years = 4.0
# rental_per_gpu_hour = 2.50          # rented hardware: when set, it replaces capex_per_gpu,
#                                     # capex_per_node, residual_fraction and depreciation_years
energy_per_kwh = 0.12
pue = 1.3                             # facility power / IT power
opex_per_node_month = 300.0           # support, network, space: shared by the node's GPUs
prompt_token_weight = 0.25            # a prompt token's cost relative to a completion token,
                                      # used when the server reports no prefill/decode time
cached_prompt_token_weight = 0.1      # a prompt token served from a prefix cache, relative to a
                                      # computed prompt token (0 to 1), in the same token split
tariff_timezone = "UTC"

# Time-of-use energy prices (local time in tariff_timezone); outside them energy_per_kwh applies.
# [[prices.tariff]]
# start = "17:00"
# end = "21:00"
# energy_per_kwh = 0.30
# days = ["mon", "tue", "wed", "thu", "fri"]

# Inference servers whose tokens this node's cost is divided by.
# [[sources]]
# name = "vllm-main"
# kind = "vllm"                       # vllm, sglang, tgi, llamacpp, trtllm, lmdeploy, dynamo, triton,
#                                     # generic, auto, push
# url = "http://127.0.0.1:8000/metrics"
# devices = ["all"]                   # or GPU indexes / UUIDs: ["0", "1"]
# model = "qwen2.5-7b"                # the model's name where the server gives none (llama.cpp,
#                                     # TGI) or a placeholder ("undefined" from trtllm-serve, "default")

# Model profiles for the roofline (`meter bench` capacity, `meter report`), beside the built-in
# llama-3.1-8b, llama-3.1-70b and gpt-oss-120b:
# (a name with a dot in it is quoted: [models."NAME"])
# [models."qwen2.5-32b"]
# total_params = 32.8e9
# active_params = 32.8e9
# layers = 64
# kv_heads = 8
# head_dim = 128
# bytes_per_param = 2.0

# [push]
# listen = "127.0.0.1:9465"           # usage records POSTed by workloads with no metrics

# [metrics]
# listen = "127.0.0.1:9464"           # Prometheus endpoint of the agent (off by default)

# [otlp]                              # OTLP/HTTP (protobuf) export; needs pip install 'meterd[otlp]'
# endpoint = "http://127.0.0.1:4318"  # an OpenTelemetry collector; /v1/metrics is appended
# interval_s = 60

# [ship]                              # send every window, exactly once, to a collector or any
#                                     # CloudEvents sink that takes OpenMeter's ingest format
# url = "https://collector.internal:8650"   # a base URL: the sink's path is appended
# token_file = "${CREDENTIALS_DIRECTORY}/ship-token"   # must not be readable by group or others
# allow_insecure = false              # plain http is refused unless loopback or this is true
# backoff_cap_s = 300                 # longest wait between retries while the sink is down
# ca_file = "${CREDENTIALS_DIRECTORY}/collector-ca.pem"  # a private CA, trusted instead of the
#                                     # system's CAs (`meter agent --ca-file` overrides it)
# client_cert = "${CREDENTIALS_DIRECTORY}/node.pem"  # mutual TLS: the node's certificate and
# client_key = "${CREDENTIALS_DIRECTORY}/node.key"   # its key (mode 0600; omit if in the cert)
# sink = "meterd"                     # meterd (window events to `meter collector`), openmeter,
#                                     # lago or stripe (meterd.usage.v1 per model and tenant;
#                                     # docs/billing.md); `meter agent --sink KIND` overrides
# subject = "gpu-node-17"             # who untenanted and idle usage is billed to (default: node)
# window_events = false               # openmeter: the window events too, beside usage events
# rate_per_s = 25                     # stripe: meter events a second (live mode allows 1000)
#
# [ship.metrics]                      # lago: billable metric codes; stripe: meter event names
# cost_micro = "meterd_cost"          # data field = name (prompt_tokens, completion_tokens, ...)
#
# [ship.subscriptions]                # lago: subject (tenant) -> external_subscription_id
# "team-a" = "sub_team_a"
#
# [ship.customers]                    # stripe: subject (tenant) -> Stripe customer id
# "team-a" = "cus_NffrFeUfNV2Hib"
'''
