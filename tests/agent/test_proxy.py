"""`meter proxy` in front of a fake Ollama (its API from Ollama's docs: /api/generate and
/api/chat with prompt_eval_count / eval_count, streamed as NDJSON by default; /v1/chat/completions
with an OpenAI usage object), reporting to a real push endpoint: per-tenant usage equals what
the responses said."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from meterd.agent.proxy import UsageProxy, parse_keys, usage_of
from meterd.probes.push import PushEndpoint


class FakeOllama:
    def __init__(self):
        fake = self
        self.n = 0

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.n += 1
                prompt, out = 10 + len(body.get("prompt", "") or json.dumps(body.get("messages"))) // 4, 3 + fake.n
                if self.path == "/v1/chat/completions":
                    doc = {"id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                           "usage": {"prompt_tokens": prompt, "completion_tokens": out,
                                     "total_tokens": prompt + out}}
                    return self._send(json.dumps(doc).encode(), "application/json")
                if body.get("stream", True):
                    lines = [{"model": body["model"], "response": w, "done": False} for w in ("a", "b")]
                    lines.append({"model": body["model"], "response": "", "done": True, "done_reason": "stop",
                                  "prompt_eval_count": prompt, "eval_count": out, "total_duration": 1})
                    data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
                    return self._send(data, "application/x-ndjson")
                doc = {"model": body["model"], "response": "ab", "done": True,
                       "prompt_eval_count": prompt, "eval_count": out}
                self._send(json.dumps(doc).encode(), "application/json")

            def _send(self, data, ctype):
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_the_proxy_records_each_responses_usage_per_tenant():
    import time

    from meterd.agent.proxy import PushSink

    with FakeOllama() as ollama, PushEndpoint() as push:
        sink = PushSink(push.url)
        proxy = UsageProxy(ollama.url, sink, keys=parse_keys(["key-a=team-a", "key-b=team-b"])).start()
        want: dict = {}
        try:
            with httpx.Client(base_url=proxy.url, timeout=30) as c:
                calls = [("key-a", "/api/generate", {"model": "llama3.2", "prompt": "Why is the sky blue?"}),
                         ("key-a", "/api/generate", {"model": "llama3.2", "prompt": "hello", "stream": False}),
                         ("key-b", "/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}),
                         ("key-b", "/v1/chat/completions", {"model": "qwen2.5", "messages": [{"role": "user", "content": "x"}]}),
                         (None, "/api/generate", {"model": "llama3.2", "prompt": "no key", "stream": False})]
                for key, path, body in calls:
                    r = c.post(path, json=body, headers={"Authorization": f"Bearer {key}"} if key else {})
                    assert r.status_code == 200
                    lines = [json.loads(x) for x in r.text.splitlines() if x.strip()]
                    u = next(usage_of(d) for d in reversed(lines) if usage_of(d))  # what the client sees
                    tenant = {"key-a": "team-a", "key-b": "team-b"}.get(key, "")
                    acc = want.setdefault((u.model, tenant), [0, 0])
                    acc[0] += u.prompt_tokens
                    acc[1] += u.completion_tokens
            deadline = time.monotonic() + 10
            got: dict = {}
            while time.monotonic() < deadline:
                for k, v in push.drain().items():
                    acc = got.setdefault(k, [0, 0])
                    acc[0] += v.prompt_tokens
                    acc[1] += v.completion_tokens
                if got == want:
                    break
                time.sleep(0.05)
        finally:
            proxy.stop()
            sink.close()
    assert got == want
    assert set(want) == {("llama3.2", "team-a"), ("llama3.2", "team-b"), ("qwen2.5", "team-b"), ("llama3.2", "")}


def test_the_proxy_forwards_to_and_listens_on_loopback_only():
    with pytest.raises(ValueError, match="loopback"):
        UsageProxy("http://10.0.0.1:11434", lambda r: None)
    with pytest.raises(ValueError, match="KEY=TENANT"):
        parse_keys(["nokey"])


def test_usage_of_reads_openai_and_ollama_shapes():
    assert usage_of({"model": "m", "usage": {"prompt_tokens": 5, "completion_tokens": 2,
                                             "prompt_tokens_details": {"cached_tokens": 3}}}).cached_prompt_tokens == 3
    assert usage_of({"model": "m", "done": True, "prompt_eval_count": 7, "eval_count": 1}).prompt_tokens == 7
    assert usage_of({"model": "m", "done": False, "response": "x"}) is None
