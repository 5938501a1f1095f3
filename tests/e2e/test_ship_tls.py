"""Shipping to a collector over TLS with a private CA and mutual TLS, end to end on loopback:
`meter collector serve` with a certificate made here (the openssl CLI), an agent given only the
collector's base URL, `--ca-file` and a client certificate in its config, and `meter report
--collector` over the same TLS."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).parents[2]


def _openssl(d: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    if shutil.which("openssl") is None:
        if os.environ.get("CI"):
            pytest.fail("the openssl CLI is needed (CI is set): apt-get install openssl")
        pytest.skip("the openssl CLI is not installed")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(d, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=meterd test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, cn, ext in (("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                          ("client", "n1", "extendedKeyUsage=clientAuth\n")):
        (d / f"{name}.ext").write_text("basicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\n"
                                       "authorityKeyIdentifier=keyid,issuer\n" + ext)
        _openssl(d, "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
        (d / f"{name}.key").chmod(0o600)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def meter(*args, env=None, timeout=90):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "tests.fakes.run_meter", *args], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=timeout)


def secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def collector(pki, tmp_path):
    """A collector serving HTTPS that requires a client certificate from the test CA."""
    db = tmp_path / "collector.db"
    node_token = meter("collector", "token", "create", "n1", "--db", str(db)).stdout.strip().splitlines()[-1]
    read_token = meter("collector", "token", "create", "--read", "finance", "--db", str(db)).stdout.strip().splitlines()[-1]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "meterd.agent.cli", "collector", "serve", "--db", str(db), "--listen",
         f"127.0.0.1:{port}", "--certfile", str(pki / "server.pem"), "--keyfile", str(pki / "server.key"),
         "--client-ca", str(pki / "ca.pem")], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    base = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(base + "/healthz", verify=ctx, timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the collector did not come up: {proc.communicate()[1][-2000:]}")
        time.sleep(0.1)
    try:
        yield {"base": base, "db": db, "node_token": secret(tmp_path / "node.tok", node_token),
               "read_token": secret(tmp_path / "read.tok", read_token), "ctx": ctx}
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # waits, and closes its stderr pipe


def rows(db, sql):
    c = sqlite3.connect(db)
    try:
        return c.execute(sql).fetchall()
    finally:
        c.close()


def test_base_url_private_ca_and_client_certificate_end_to_end(pki, collector, tmp_path):
    # Without the client certificate, the collector refuses the handshake.
    with pytest.raises(httpx.HTTPError):
        httpx.get(collector["base"] + "/healthz", verify=ssl.create_default_context(cafile=str(pki / "ca.pem")),
                  timeout=5)

    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'node = "n1"\n[ship]\nurl = "{collector["base"]}"\n'  # the base URL, as serve prints it
                   f'token_file = "{collector["node_token"]}"\n'
                   f'client_cert = "{pki / "client.pem"}"\nclient_key = "{pki / "client.key"}"\n')
    db = tmp_path / "agent.db"
    r = meter("agent", "--config", str(cfg), "--db", str(db), "--window", "1", "--interval", "0.25",
              "--duration", "3", "--ca-file", str(pki / "ca.pem"), env={"METERD_FAKE_GPUS": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stderr.count(f"shipping windows to the meterd sink at {collector['base']}/api/v1/events "
                          "(/api/v1/events appended to the URL given), trusting the CA in") == 1
    assert "CERTIFICATE_VERIFY_FAILED" not in r.stderr and "quarantined" not in r.stderr
    (committed,), = rows(db, "SELECT count(*) FROM windows")
    (shipped,), = rows(db, "SELECT count(*) FROM windows WHERE shipped_at IS NOT NULL")
    assert committed >= 4 and shipped == committed
    (held,), = rows(collector["db"], "SELECT count(*) FROM events")
    assert held == committed

    # The same, trusting only the system's CAs: the private certificate is refused, nothing ships
    # and nothing is quarantined (a TLS failure is retried, never a refusal of the windows).
    db2 = tmp_path / "agent2.db"
    r = meter("agent", "--config", str(cfg), "--db", str(db2), "--window", "1", "--interval", "0.25",
              "--duration", "1.5", env={"METERD_FAKE_GPUS": "1"})
    assert r.returncode == 0, r.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in r.stderr
    assert rows(db2, "SELECT count(*) FROM windows WHERE shipped_at IS NOT NULL OR quarantine_reason IS NOT NULL") == [(0,)]

    # meter report --collector over the same TLS: CA, client certificate, a 0600 token file.
    args = ["report", "--collector", collector["base"], "--token-file", str(collector["read_token"]),
            "--ca-file", str(pki / "ca.pem"), "--client-cert", str(pki / "client.pem"),
            "--client-key", str(pki / "client.key"), "--format", "json"]
    r = meter(*args)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (energy,), = rows(db, "SELECT sum(energy_j) FROM windows")
    assert doc["totals"]["energy_j"] == pytest.approx(energy)
    collector["read_token"].chmod(0o644)
    r = meter(*args)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"Error: token file {collector['read_token']} is accessible to group or others (mode 0644): "
        f"run chmod 600 {collector['read_token']}"]


def test_tls_files_are_checked_at_start_in_one_line(pki, tmp_path):
    from meterd.agent.tls import TlsSetupError, client_context

    key = tmp_path / "client.key"
    key.write_bytes((pki / "client.key").read_bytes())
    key.chmod(0o644)
    with pytest.raises(TlsSetupError, match=rf"^the client key {key} is accessible to group or others \(mode 0644\): "
                                            rf"run chmod 600 {key}$"):
        client_context(None, str(pki / "client.pem"), str(key))
    with pytest.raises(TlsSetupError, match=r"^ship.client_key needs ship.client_cert"):
        client_context(None, None, str(pki / "client.key"))
    with pytest.raises(TlsSetupError, match=rf"^ship.ca_file {pki / 'client.csr'}: not a PEM CA certificate"):
        client_context(str(pki / "client.csr"))
    ctx = client_context(str(pki / "ca.pem"), str(pki / "client.pem"), str(pki / "client.key"))
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert client_context() is True  # nothing given: the system's CAs, as before

    # The agent says so in one line at start, before the store is opened.
    tok = secret(tmp_path / "tok", "t")
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[ship]\nurl = "https://127.0.0.1:9"\ntoken_file = "{tok}"\n'
                   f'client_cert = "{pki / "client.pem"}"\nclient_key = "{key}"\n')
    r = meter("agent", "--config", str(cfg), "--db", str(tmp_path / "m.db"), "--duration", "1")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"Error: the client key {key} is accessible to group or others (mode 0644): run chmod 600 {key}"]
    assert not (tmp_path / "m.db").exists()
    r = meter("config", "check", str(cfg))
    assert r.returncode == 1 and "accessible to group or others" in r.stderr
