"""The generation interface: transformers backend on the tiny model, OpenAI backend against a local HTTP server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from autoif_train.generation import GenerationConfig, GenerationError, build_generator, to_messages


@pytest.fixture(scope="module")
def tiny_gen(tiny_model_dir):
    gen = build_generator("transformers", str(tiny_model_dir), batch_size=2, progress=False)
    yield gen
    gen.close()


PROMPTS = ["hello there", [{"role": "user", "content": "write a poem about the sea"}], "x", "Explain photosynthesis."]


def test_transformers_shapes_order_and_seed(tiny_gen):
    cfg = GenerationConfig(n=3, temperature=1.0, max_new_tokens=6, seed=1)
    out = tiny_gen.generate(PROMPTS, cfg)
    assert [len(o) for o in out] == [3, 3, 3, 3]
    assert all(isinstance(t, str) for o in out for t in o)
    assert tiny_gen.generate(PROMPTS, cfg) == out  # same seed, same samples
    assert tiny_gen.generate(PROMPTS, GenerationConfig(n=3, temperature=1.0, max_new_tokens=6, seed=2)) != out


def test_transformers_greedy_is_independent_of_batching(tiny_model_dir, tiny_gen):
    """Left padding + attention mask: greedy output of a prompt must not depend on its batch neighbours."""
    cfg = GenerationConfig(n=2, temperature=0, max_new_tokens=8)
    batched = tiny_gen.generate(PROMPTS, cfg)
    single = [tiny_gen.generate([p], cfg)[0] for p in PROMPTS]
    assert batched == single
    assert all(o[0] == o[1] for o in batched)  # greedy: n identical copies


def test_shared_prefill_matches_plain_generate(tiny_model_dir):
    """One prefill per prompt, cache repeated K times: the same tokens as K copies through plain `generate`
    (greedy, left-padded prompts of different lengths), and the same sample layout when sampling."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoif_train.generation.shared_prefill import generate_shared_prefill

    tok = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    enc = tok(["a short one", "a much longer prompt with many more words in it"], return_tensors="pt", padding=True)
    assert enc["attention_mask"].sum(1).tolist()[0] < enc["attention_mask"].shape[1]  # really left-padded
    kw = dict(do_sample=False, max_new_tokens=10, pad_token_id=tok.pad_token_id, eos_token_id=None)
    plain = model.generate(input_ids=enc["input_ids"].repeat_interleave(3, 0),
                           attention_mask=enc["attention_mask"].repeat_interleave(3, 0), **kw)
    shapes = []  # input_ids shape of every forward: the prompt must go through once, not once per sample
    hook = model.register_forward_pre_hook(lambda m, a, k: shapes.append(tuple(k["input_ids"].shape)), with_kwargs=True)
    shared = generate_shared_prefill(model, enc["input_ids"], enc["attention_mask"], 3, **kw)
    hook.remove()
    assert torch.equal(plain, shared)
    assert [s for s in shapes if s[1] > 1] == [(2, enc["input_ids"].shape[1] - 1)]
    torch.manual_seed(0)
    sampled = generate_shared_prefill(model, enc["input_ids"], enc["attention_mask"], 4, do_sample=True,
                                      max_new_tokens=5, pad_token_id=tok.pad_token_id)
    assert sampled.shape[0] == 8 and torch.equal(sampled[:4, : enc["input_ids"].shape[1]],
                                                 enc["input_ids"][0].expand(4, -1))
    one = generate_shared_prefill(model, enc["input_ids"], enc["attention_mask"], 1, **kw)  # K=1: plain call
    assert torch.equal(one, plain[::3])


def test_prompt_validation_and_config_errors():
    assert to_messages("hi") == [{"role": "user", "content": "hi"}]
    with pytest.raises(TypeError, match="message 0"):
        to_messages([{"content": "no role"}])
    with pytest.raises(ValueError, match="n must be"):
        GenerationConfig(n=0)
    with pytest.raises(ValueError, match="unknown generation backend"):
        build_generator("nope", "m")


def test_vllm_backend_missing_gives_clear_error():
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(GenerationError, match="needs the vllm package"):
        build_generator("vllm", "some/model")


class FakeServer:
    """A real HTTP server speaking the chat-completions protocol, with scripted failures and latency."""

    def __init__(self, fail_first: int = 0, status: int = 500, delay: float = 0.0, ignore_n: bool = False):
        self.fail_first, self.status, self.delay, self.ignore_n = fail_first, status, delay, ignore_n
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.calls += 1
                    call = server.calls
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay)
                    if call <= server.fail_first:
                        payload, code = b'{"error": "busy"}', server.status
                    else:
                        text = body["messages"][-1]["content"]
                        n = 1 if server.ignore_n else body["n"]
                        choices = [
                            {"index": k, "message": {"role": "assistant", "content": f"{text}|{body.get('seed')}|{k}"}}
                            for k in reversed(range(n))
                        ]
                        payload, code = json.dumps({"choices": choices}).encode(), 200
                finally:
                    with server.lock:
                        server.in_flight -= 1
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_factory():
    servers = []

    def make(**kwargs):
        servers.append(FakeServer(**kwargs))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _gen(server, tmp_path, **kwargs):
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    return build_generator("openai", "served-model", base_url=server.url, progress=False, backoff=0.01, **kwargs)


def test_openai_order_n_concurrency_and_cache(server_factory, tmp_path):
    server = server_factory(delay=0.05)
    prompts = [f"p{i}" for i in range(12)]
    gen = _gen(server, tmp_path, max_concurrency=3)
    out = gen.generate(prompts, GenerationConfig(n=2, seed=7))
    assert out == [[f"p{i}|7|0", f"p{i}|7|1"] for i in range(12)]  # prompt order and choice index order kept
    assert server.calls == 12 and 1 < server.max_in_flight <= 3
    gen.close()
    again = _gen(server, tmp_path, max_concurrency=3)  # a re-run (new process state, same cache folder)
    assert again.generate(prompts, GenerationConfig(n=2, seed=7)) == out
    assert server.calls == 12 and again.stats["cache_hits"] == 12  # nothing paid twice
    again.generate(prompts[:2], GenerationConfig(n=2, seed=8))  # a different request is not a cache hit
    assert server.calls == 14
    again.close()


def test_openai_retries_then_succeeds(server_factory, tmp_path):
    server = server_factory(fail_first=2, status=503)
    gen = _gen(server, tmp_path, max_concurrency=1, cache_dir=None)
    assert gen.generate(["a"], GenerationConfig(n=1)) == [["a|0|0"]]
    assert server.calls == 3 and gen.stats["retries"] == 2


def test_openai_gives_up_and_refuses_clearly(server_factory, tmp_path):
    busy = server_factory(fail_first=100, status=429)
    with pytest.raises(GenerationError, match="giving up after 3 attempts"):
        _gen(busy, tmp_path, max_retries=2, cache_dir=None).generate(["a"], GenerationConfig())
    bad = server_factory(fail_first=100, status=400)
    with pytest.raises(GenerationError, match="HTTP 400"):
        _gen(bad, tmp_path, cache_dir=None).generate(["a"], GenerationConfig())
    assert bad.calls == 1  # 400 is not retried


def test_openai_timeout_is_retried(server_factory, tmp_path):
    slow = server_factory(delay=0.5)
    with pytest.raises(GenerationError, match="ReadTimeout"):
        _gen(slow, tmp_path, timeout=0.1, max_retries=1, cache_dir=None).generate(["a"], GenerationConfig())
    assert slow.calls == 2


def test_openai_n_as_separate_requests(server_factory, tmp_path):
    server = server_factory(ignore_n=True)
    gen = _gen(server, tmp_path, n_in_request=False)
    assert gen.generate(["q"], GenerationConfig(n=3, seed=5)) == [["q|5|0", "q|6|0", "q|7|0"]]
    with pytest.raises(GenerationError, match="n_in_request"):
        _gen(server, tmp_path / "other").generate(["q"], GenerationConfig(n=3))
