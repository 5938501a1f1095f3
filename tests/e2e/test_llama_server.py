"""Every token once, from a real inference server: llama.cpp's llama-server (built from source by
tests/servers/llama_server.sh) serving Gemma 3 270M on 127.0.0.1, metered by the agent running
as a real subprocess.

Known completions are sent (some prompts repeated, so the server's prompt cache serves part of
them; two at a time, as the server runs two slots); the agent is killed with SIGKILL while the
server keeps serving, and restarted; the server is restarted once. meterd's prompt tokens
(cached included), cached prompt tokens and completion tokens must equal the sums of the
responses' ``usage`` exactly.

The binary and the model come from ``METERD_LLAMA_SERVER`` / ``METERD_LLAMA_MODEL`` (what
``tests/servers/llama_server.sh --print-env`` prints, and .ci/run exports), else from the
script's cache. Without them the test is skipped, except in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.agent.test_agent_restart import meter, wait_for_windows

MODEL_NAME = "gemma-3-270m"
_CACHE = Path(os.environ.get("METERD_CI_CACHE") or Path(os.environ.get("XDG_CACHE_HOME")
                                                         or Path.home() / ".cache") / "meterd-ci")


def _paths() -> tuple[Path, Path] | None:
    server = Path(os.environ.get("METERD_LLAMA_SERVER") or _CACHE / "llama-server-11434" / "bin" / "llama-server")
    model = Path(os.environ.get("METERD_LLAMA_MODEL")
                 or _CACHE / "gemma3-270m-q4_k_m-1.0.0" / "gemma-3-270m-q4_k_m.gguf")
    return (server, model) if server.is_file() and model.is_file() else None


@pytest.fixture(scope="module")
def llama_paths() -> tuple[Path, Path]:
    found = _paths()
    if found is None:
        why = ("no llama-server or model: run tests/servers/llama_server.sh (about 16 min of building "
               "once) or set METERD_LLAMA_SERVER and METERD_LLAMA_MODEL")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why)
        pytest.skip(why)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    def __init__(self, binary: Path, model: Path, port: int, log: Path) -> None:
        self.binary, self.model, self.port, self.log = binary, model, port, log
        self.proc: subprocess.Popen | None = None
        self.base = f"http://127.0.0.1:{port}"

    def start(self, timeout_s: float = 120.0) -> None:
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
             "-c", "2048", "-np", "2", "--metrics", "-t", "2", "--seed", "1"],
            stdout=out, stderr=subprocess.STDOUT)
        out.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"llama-server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"llama-server not healthy after {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


PROMPTS = [
    "The capital of France is",
    "Write one sentence about the sea. The sea is",
    "List three colours: red, green and",
    "In a small village at the foot of the mountains there lived an old baker who every morning",
]


class Client:
    """Sends completions and sums what their ``usage`` says."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.prompt = self.cached = self.completion = 0
        self.requests = 0

    def complete(self, prompt: str, max_tokens: int = 6) -> None:
        r = httpx.post(self.base + "/v1/completions", timeout=120,
                       json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "seed": 1})
        r.raise_for_status()
        u = r.json()["usage"]
        self.prompt += u["prompt_tokens"]
        self.cached += (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        self.completion += u["completion_tokens"]
        self.requests += 1

    def batch(self, prompts: list[str]) -> None:
        """Two at a time, as the server's two slots take them."""
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(self.complete, prompts))

    @property
    def sums(self) -> tuple[int, int, int]:
        return self.prompt, self.cached, self.completion


def _metered(db: Path) -> tuple[int, int, int]:
    try:
        c = sqlite3.connect(db, timeout=5)
        try:
            return c.execute("SELECT coalesce(sum(prompt_tokens), 0), coalesce(sum(cached_prompt_tokens), 0),"
                             " coalesce(sum(completion_tokens), 0) FROM windows").fetchone()
        finally:
            c.close()
    except sqlite3.OperationalError:
        return (0, 0, 0)


def _wait_metered(db: Path, want: tuple[int, int, int], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _metered(db) == want:
            return
        time.sleep(0.2)
    raise AssertionError(f"metered {_metered(db)} != the responses' usage {want} after {timeout_s} s")


def test_every_token_of_a_real_llama_server_once_across_an_agent_kill_and_a_server_restart(tmp_path, llama_paths):
    binary, model = llama_paths
    server = LlamaServer(binary, model, _free_port(), tmp_path / "llama-server.log")
    db = tmp_path / "m.db"
    args = ("agent", "--db", str(db), "--window", "1", "--interval", "0.25",
            "--source", f"llamacpp={server.base}/metrics,model={MODEL_NAME}")
    client = Client(server.base)
    agent = None
    server.start()
    try:
        agent = meter(*args, gpus=1)
        wait_for_windows(db, 2 * 2)  # the GPU and the CPU: the first scrape (the origin) is long done

        # some prompts twice: the second time the server's prompt cache serves most of it
        client.batch([PROMPTS[0], PROMPTS[3], PROMPTS[3], PROMPTS[1]])
        client.batch([PROMPTS[3], PROMPTS[2]])
        _wait_metered(db, client.sums)
        assert client.cached > 0, "the server's prompt cache served nothing: the test would prove little"

        # the agent dies with SIGKILL while the server keeps serving
        client.batch([PROMPTS[0], PROMPTS[2]])
        time.sleep(0.6)  # scraped into the open window, which dies with the agent
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=10)
        agent.stderr.close()
        client.batch([PROMPTS[3], PROMPTS[1], PROMPTS[0]])
        time.sleep(1.0)
        agent = meter(*args, gpus=1)
        _wait_metered(db, client.sums)  # the downtime's tokens, backfilled

        # the server restarts once (its counters start from zero again)
        server.stop()
        time.sleep(0.5)
        server.start()
        client.batch([PROMPTS[2], PROMPTS[2], PROMPTS[3], PROMPTS[0]])
        _wait_metered(db, client.sums)

        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
        assert agent.returncode == 0, err
        agent = None
    finally:
        if agent is not None:
            agent.kill()
            agent.wait(timeout=10)
        server.stop()

    prompt, cached, completion = _metered(db)
    print(f"\nllama-server e2e: {client.requests} requests; usage sums prompt {client.prompt} (cached "
          f"{client.cached}), completion {client.completion}; metered prompt {prompt} (cached {cached}), "
          f"completion {completion}")
    assert (prompt, cached, completion) == client.sums

    c = sqlite3.connect(db)
    c.row_factory = sqlite3.Row
    ws = [dict(r) for r in c.execute("SELECT * FROM windows ORDER BY start, device")]
    models = {r[0] for r in c.execute("SELECT DISTINCT model FROM window_usage")}
    c.close()
    assert models == {MODEL_NAME}
    flags = [json.loads(w["flags"]) for w in ws]
    assert sum("backfill" in f for f in flags) >= 1  # the restarted agent billed the downtime
    assert {w["token_source"] for w in ws if w["prompt_tokens"]} == {"counter"}
