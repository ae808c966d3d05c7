"""`gpt2lab serve`, tested as its users meet it: the official `openai` client
against a server in its own process, on 127.0.0.1 and a free port.

Greedy completions equal `gpt2lab generate --greedy`, streaming gives the same
text, echo's prompt log-probabilities sum to minus `gpt2lab eval`'s loss; bad
requests get 4xx JSON errors naming the field while the server stays up;
many clients at once each get their own right stream; a client that leaves
stops its generation."""

import base64
import http.client
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from openai import OpenAI

from conftest import ROOT, assert_user_error, run_cli
from served import read_url, serving, tiny_model

PROMPT = "ROMEO: But soft, what light through yonder"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("served") / "tiny")


@pytest.fixture(scope="module")
def server(model_dir):
    with serving(model_dir) as (url, proc):
        yield url
    assert proc.returncode == 0, proc.stderr.read()


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server + "/v1", api_key="x", max_retries=0, timeout=120)


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def post_raw(url: str, path: str, body: bytes, headers=None) -> tuple[int, dict]:
    """POST bytes as they are (the openai client would refuse to send most malformed requests)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def streamed(client, **kwargs) -> tuple[str, float, int]:
    """The text of one streamed completion, its time to first token and its chunks."""
    start, first, text, chunks = time.perf_counter(), None, "", 0
    for chunk in client.completions.create(model="m", stream=True, **kwargs):
        for choice in chunk.choices:
            if choice.text:
                first = first if first is not None else time.perf_counter() - start
                text += choice.text
                chunks += 1
    return text, first, chunks


# ---------------------------------------------------------------------------
# The real client: plain, streamed, logprobs, echo
# ---------------------------------------------------------------------------


def test_models_and_health(server, client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["tiny"]
    health = get(server + "/health")
    assert health["status"] == "ok" and health["model"] == "tiny"


def test_greedy_equals_generate_greedy_plain_and_streamed(client, model_dir):
    proc = run_cli("generate", "--model", model_dir, "--prompt", PROMPT, "--greedy", "--max-new-tokens", 40, "--json")
    assert proc.returncode == 0, proc.stderr
    expected = json.loads(proc.stdout.strip().splitlines()[-1])["text"]
    assert len(set(expected.split())) > 3, expected  # a text worth comparing, not one token repeated
    plain = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, temperature=0)
    assert plain.choices[0].text == expected
    assert plain.choices[0].finish_reason == "length"
    assert plain.usage.completion_tokens == 40
    text, _, chunks = streamed(client, prompt=PROMPT, max_tokens=40, temperature=0)
    assert text == expected
    assert chunks > 10  # token by token, not one block at the end


def test_seeded_sampling_is_the_same_streamed_or_not(client):
    kwargs = dict(prompt=PROMPT, max_tokens=30, temperature=1.3, top_p=0.95, seed=7)
    plain = client.completions.create(model="tiny", **kwargs).choices[0].text
    assert streamed(client, **kwargs)[0] == plain
    other = client.completions.create(model="tiny", **{**kwargs, "seed": 8}).choices[0].text
    assert other != plain


def test_logprobs_are_the_models_own(client):
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 12
    assert "".join(lp.tokens) == r.choices[0].text
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3
        assert value == pytest.approx(max(top.values()), abs=1e-5)  # greedy takes the most likely token
        assert top[token] == pytest.approx(value, abs=1e-5)
        assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-5
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])


def test_echo_logprobs_sum_to_minus_eval_loss(client, server, model_dir, tmp_path):
    text = "What light through yonder window breaks? It is the east, and Juliet is the sun."
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    proc = run_cli("eval", "--model", model_dir, "--text", tmp_path / "t.txt", "--json")
    assert proc.returncode == 0, proc.stderr
    score = json.loads(proc.stdout.strip().splitlines()[-1])
    total = score["loss"] * score["tokens"]
    scored = client.completions.create(model="tiny", prompt=text, max_tokens=0, echo=True, logprobs=1)
    choice = scored.choices[0]
    assert choice.text == text
    assert len(choice.logprobs.token_logprobs) == score["tokens"]
    assert -sum(choice.logprobs.token_logprobs) == pytest.approx(total, rel=1e-4)
    assert scored.usage.completion_tokens == 0
    # echo with generation: the prompt, then the new text; the page's per-token losses agree
    more = client.completions.create(model="tiny", prompt=text, max_tokens=5, echo=True, temperature=0)
    assert more.choices[0].text.startswith(text) and len(more.choices[0].text) > len(text)
    status, analysis = post_raw(server, "/api/analyze", json.dumps({"text": text}).encode())
    assert status == 200 and analysis["dropped"] == 0
    assert sum(t["loss"] for t in analysis["tokens"]) == pytest.approx(total, rel=1e-4)


def test_n_choices_stop_strings_and_usage(client):
    r = client.completions.create(model="tiny", prompt=[PROMPT, "JULIET:"], n=3, max_tokens=8, seed=3)
    assert [c.index for c in r.choices] == list(range(6))
    assert len({c.text for c in r.choices}) > 1  # the samples of one prompt differ
    greedy = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, temperature=0).choices[0].text
    stop = greedy.split()[3]
    cut = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].text == greedy[:greedy.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 4 and chunks[-1].choices == []
    assert chunks[-2].choices[0].finish_reason == "length"


def test_top_k_one_is_greedy(client):
    greedy = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=0).choices[0].text
    sampled = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=1.5, seed=1,
                                        extra_body={"top_k": 1})
    assert sampled.choices[0].text == greedy


def test_analysis_endpoints(server):
    import torch

    from gpt2lab.checkpoint import load_model
    from gpt2lab.evaluate import attention_patterns

    card = get(server + "/api/model")
    assert card["preset"] == "tiny" and card["parameters"] > 0 and card["tokenizer"]["kind"] == "gpt2"
    status, out = post_raw(server, "/api/attention", json.dumps({"text": PROMPT, "layer": 1}).encode())
    assert status == 200
    model, tokenizer = load_model(card["path"])
    tokens, patterns = attention_patterns(model, tokenizer, PROMPT)
    assert out["tokens"] == tokens
    got = torch.tensor(out["patterns"])  # (head, pos, pos)
    torch.testing.assert_close(got, patterns[1], atol=1e-4, rtol=0)
    status, out = post_raw(server, "/api/analyze", json.dumps({"text": PROMPT, "top_k": 5}).encode())
    logits = torch.frombuffer(bytearray(base64.b64decode(out["next"]["logits"])), dtype=torch.float32)
    assert logits.shape == (model.cfg.d_vocab,)
    assert out["next"]["top"][0]["id"] == int(logits.argmax())
    greedy = json.loads(urllib.request.urlopen(urllib.request.Request(
        server + "/v1/completions", data=json.dumps({"prompt": PROMPT, "max_tokens": 1, "temperature": 0,
                                                     "logprobs": 0}).encode())).read())
    assert greedy["choices"][0]["logprobs"]["tokens"][0] == out["next"]["top"][0]["text"]


# ---------------------------------------------------------------------------
# Bad requests: 4xx JSON errors naming the field; the server stays up
# ---------------------------------------------------------------------------

MALFORMED = [
    (b"{not json", None, 400),
    (b"[1, 2]", None, 400),
    (b'"a string"', None, 400),
    (json.dumps({"prompt": 5}).encode(), "prompt", 400),
    (json.dumps({"prompt": ["ok", 3]}).encode(), "prompt", 400),
    (json.dumps({"prompt": "hi", "max_tokens": -1}).encode(), "max_tokens", 400),
    (json.dumps({"prompt": "hi", "max_tokens": 10**9}).encode(), "max_tokens", 400),
    (json.dumps({"prompt": "hi", "max_tokens": "12"}).encode(), "max_tokens", 400),
    (json.dumps({"prompt": "hi", "max_tokens": True}).encode(), "max_tokens", 400),
    (json.dumps({"prompt": "hi", "temperature": -0.5}).encode(), "temperature", 400),
    (json.dumps({"prompt": "hi", "temperature": "hot"}).encode(), "temperature", 400),
    (json.dumps({"prompt": "hi", "top_p": 1.5}).encode(), "top_p", 400),
    (json.dumps({"prompt": "hi", "n": 0}).encode(), "n", 400),
    (json.dumps({"prompt": "hi", "n": 1000}).encode(), "n", 400),
    (json.dumps({"prompt": "hi", "logprobs": 99}).encode(), "logprobs", 400),
    (json.dumps({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}).encode(), "stop", 400),
    (json.dumps({"prompt": "hi", "stream": "yes"}).encode(), "stream", 400),
    (json.dumps({"prompt": "hi", "unknown_field": 1}).encode(), "unknown_field", 400),
    (json.dumps({"prompt": "hi " * 200}).encode(), "prompt", 400),  # longer than the context
    (json.dumps({"prompt": "x" * 10_000_000}).encode(), None, 413),  # a 10 MB prompt
]


def test_twenty_malformed_requests_get_4xx_and_the_server_stays_up(server):
    assert len(MALFORMED) == 20
    for body, param, status in MALFORMED:
        got, answer = post_raw(server, "/v1/completions", body)
        assert got == status, (body[:80], answer)
        error = answer["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param, (body[:80], error)
        if param is not None:
            assert param in error["message"]
        assert "Traceback" not in error["message"]
        assert get(server + "/health")["status"] == "ok"


def test_the_client_sees_bad_requests_as_bad_requests(client, server):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny", prompt="hi", temperature=5)
    status, answer = post_raw(server, "/api/attention", json.dumps({"text": "hi", "layer": 9}).encode())
    assert status == 400 and answer["error"]["param"] == "layer"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(server + "/nowhere", timeout=10)
    assert missing.value.code == 404 and "error" in json.loads(missing.value.read())


# ---------------------------------------------------------------------------
# Concurrency: limits, disconnects, health while generating, a load test
# ---------------------------------------------------------------------------


def test_busy_server_answers_429_health_and_stops_on_disconnect(model_dir):
    with serving(model_dir, "--max-requests", 2) as (url, proc):
        client = OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        before = get(url + "/health")["steps"]
        streams = [client.completions.create(model="tiny", prompt=PROMPT, max_tokens=1024, n=8, stream=True)
                   for _ in range(2)]
        for s in streams:
            next(iter(s))  # both are generating
        start = time.perf_counter()
        health = get(url + "/health")  # answered while the model works
        assert time.perf_counter() - start < 5 and health["requests"] == 2
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4)
        for s in streams:
            s.close()  # the clients leave
        deadline = time.monotonic() + 30
        while get(url + "/health")["requests"] and time.monotonic() < deadline:
            time.sleep(0.05)
        health = get(url + "/health")
        assert health["requests"] == 0
        assert health["steps"] - before < 1024  # 2 x 1024 steps had they run to the end
        assert client.completions.create(model="tiny", prompt=PROMPT, max_tokens=3).choices  # still serving
    assert proc.returncode == 0
    out = proc.stdout.read()
    assert "stopped" in out and "Traceback" not in proc.stderr.read()


def test_load_16_concurrent_streaming_clients(client, server):
    """64 streamed requests from 16 clients at once: each gets exactly the text
    it gets alone.  Prints time to first token and tokens per second."""
    cases = [dict(prompt=f"{PROMPT} {i}", max_tokens=32, temperature=0) for i in range(4)] + \
            [dict(prompt=f"JULIET {i}:", max_tokens=32, temperature=1.0, seed=i) for i in range(4)]
    expected = [client.completions.create(model="tiny", **c).choices[0].text for c in cases]
    jobs = [i % len(cases) for i in range(64)]
    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: streamed(client, **cases[i]), jobs, timeout=300))
    wall = time.perf_counter() - start
    for i, (text, first, _) in zip(jobs, results):
        assert text == expected[i]
    ttft = sorted(r[1] for r in results)
    tokens = 64 * 32
    p50, p95 = statistics.median(ttft), ttft[int(0.95 * (len(ttft) - 1))]
    print(f"\nload: 64 streamed requests, 16 at once, 32 tokens each: time to first token p50 {p50 * 1000:.0f} ms, "
          f"p95 {p95 * 1000:.0f} ms; {tokens / wall:.0f} tokens/s in all over {wall:.1f} s")
    assert get(server + "/health")["requests"] == 0


def test_dtype_bf16_serves_completions_from_bf16_weights(model_dir):
    """`--dtype bf16`: completions come from the bf16 copy of the weights (their
    log-probabilities are the bf16 model's, not the fp32 one's), greedy text
    equals `gpt2lab generate --dtype bf16 --greedy`, and the card says bf16."""
    from gpt2lab.checkpoint import load_model
    from gpt2lab.generate import Generator

    def first_logprobs(dtype):  # what the first new token is drawn from, generating in `dtype`
        events = Generator(*load_model(model_dir)).token_events(PROMPT, greedy=True, max_new_tokens=1, dtype=dtype)
        return next(events).logits.float().log_softmax(-1)

    expected = {dtype: first_logprobs(dtype) for dtype in ("fp32", "bf16")}
    proc = run_cli("generate", "--model", model_dir, "--prompt", PROMPT, "--greedy", "--max-new-tokens", 30,
                   "--dtype", "bf16", "--json")
    assert proc.returncode == 0, proc.stderr
    text = json.loads(proc.stdout.strip().splitlines()[-1])["text"]
    with serving(model_dir, "--dtype", "bf16") as (url, _):
        assert get(url + "/api/model")["dtype"] == "bf16"
        client = OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, temperature=0, logprobs=1)
    assert r.choices[0].text == text
    token = int(expected["bf16"].argmax())
    served = r.choices[0].logprobs.token_logprobs[0]
    bf16, fp32 = float(expected["bf16"][token]), float(expected["fp32"][token])
    assert abs(bf16 - fp32) > 1e-4  # bf16 rounding shows in the log-probabilities
    assert served == pytest.approx(bf16, abs=1e-5)


def test_serve_rejects_an_unknown_dtype(model_dir):
    assert_user_error(run_cli("serve", "--model", model_dir, "--port", "0", "--dtype", "fp16"), "--dtype", "bf16")


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def test_serve_without_a_run_says_how_to_get_one(tmp_path):
    assert_user_error(run_cli("serve", cwd=tmp_path), "gpt2lab train")


def test_serve_without_model_serves_the_newest_run(tmp_path, model_dir):
    for name in ("older", "newer"):
        shutil.copytree(model_dir, tmp_path / "runs" / name / "checkpoints" / "step_00000010")
        time.sleep(0.05)
    (tmp_path / "runs" / "newer" / "checkpoints" / "step_00000010" / "model.json").touch()
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "gpt2lab", "serve", "--port", "0"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = read_url(proc, 120)
        assert get(url + "/v1/models")["data"][0]["id"] == "newer"
        taken = url.rsplit(":", 1)[1]
        assert_user_error(run_cli("serve", "--model", model_dir, "--port", taken), "already in use", "--port")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
