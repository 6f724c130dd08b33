"""The stand-in engine (a real HTTP server) and the load generator that drives it."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from calibrate.arrivals import BurstPlan
from calibrate.loadgen import (EngineHang, Endpoint, RequestSpec, request_body, run_closed_loop, run_open_loop)
from calibrate.prompts import PromptBuilder, approx_token_count
from calibrate.sim_probe import SimulatedProbe
from calibrate.standin import output_length
from profiles.step_model import StepModel

STEP = dict(overhead_s=0.003, per_seq_s=0.0, per_token_s=5e-5, weights_s=0.009, flop_token_s=6e-5, per_kv_token_s=5e-7,
            per_prefill_token_s=3e-5, prefill_attn_s=1e-8, idle_w=0.0, active_w=0.0, flop_token_j=0.0, per_kv_token_j=0.0,
            weights_j=0.0, max_power_w=0.0, kv_capacity_tokens=16000, max_batch=16, max_num_tokens=2048)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(url: str, proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "stand-in exited"
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} not healthy in {timeout_s} s")


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    path = tmp_path_factory.mktemp("standin") / "step.json"
    path.write_text(json.dumps(STEP))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "calibrate.standin", "--port", str(port), "--step-model", str(path),
                             "--model-name", "sm"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_health(base + "/health", proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_models_health_and_config(standin):
    assert get_json(standin + "/health") == {"status": "ok"}
    models = get_json(standin + "/v1/models")
    assert models["data"][0]["id"] == "sm" and models["data"][0]["max_model_len"] == 16000
    cfg = get_json(standin + "/standin/config")
    assert cfg["kv_capacity_tokens"] == 16000 and cfg["max_batch"] == 16 and cfg["step_model"]["weights_s"] == 0.009
    assert "measures no energy" in cfg["note"]


def test_streaming_protocol_one_chunk_per_token_then_usage_then_done(standin):
    prompt = PromptBuilder(3).prompt(0, 40)
    status, text = post(standin + "/v1/completions",
                        {"model": "sm", "prompt": prompt, "max_tokens": 7, "stream": True, "ignore_eos": True})
    assert status == 200
    events = [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    tokens = [c for c in chunks if c["choices"]]
    assert len(tokens) == 7 and all(approx_token_count(c["choices"][0]["text"]) == 1 for c in tokens)
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None] * 6 + ["length"]
    assert chunks[-1]["usage"] == {"prompt_tokens": 40, "completion_tokens": 7, "total_tokens": 47}


def test_max_min_tokens_and_ignore_eos(standin):
    prompt = "the of and to in is that for it as was with be by on"
    natural = output_length(prompt, 50, 0, False)
    assert 1 <= natural <= 50
    for body, expect in (({"ignore_eos": True}, 50), ({}, natural), ({"min_tokens": 50}, 50),
                         ({"min_tokens": 60}, 50)):
        status, text = post(standin + "/v1/completions", {"prompt": prompt, "max_tokens": 50, **body})
        assert status == 200
        assert json.loads(text)["usage"]["completion_tokens"] == expect, body
    status, text = post(standin + "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}],
                                                          "max_tokens": 5, "ignore_eos": True, "stream": False})
    assert status == 200 and json.loads(text)["usage"] == {"prompt_tokens": 15, "completion_tokens": 5,
                                                            "total_tokens": 20}


def test_requests_that_can_never_fit_get_400(standin):
    status, text = post(standin + "/v1/completions", {"prompt": "x " * 3000, "max_tokens": 4})
    assert status == 400 and "max_num_tokens=2048" in text
    status, text = post(standin + "/v1/completions", {"prompt": "x " * 100, "max_tokens": 15950})
    assert status == 400 and "KV capacity of 16000" in text
    status, text = post(standin + "/v1/completions", {"prompt": 5})
    assert status == 400 and "'prompt' must be" in text


def test_single_request_timing_follows_the_step_model(standin):
    step = StepModel(**STEP)
    ep = Endpoint(standin, extras={"ignore_eos": True}, model="sm")
    prompts = PromptBuilder(1)
    specs = [RequestSpec(i, 0.0, prompts.prompt(i, 512), 512, 12) for i in range(3)]
    records = run_closed_loop(ep, specs, 1)
    prefill = step.iteration_s(1, 512, 0, 512, 512 * 512)
    decode = np.mean([step.iteration_s(1, 1, 512 + k) for k in range(1, 12)])
    for r in records:
        assert r.ok and r.completion_tokens == 12 and r.prompt_tokens == 512 and len(r.token_times_s) == 12
        assert prefill <= r.first_token_s - r.send_s <= prefill + 0.006
        assert (r.finish_s - r.first_token_s) / 11 == pytest.approx(decode, rel=0.05)


def test_chat_api_is_timed_too(standin):
    ep = Endpoint(standin, path="/v1/chat/completions", api="chat", extras={"ignore_eos": True}, model="sm")
    records = run_closed_loop(ep, [RequestSpec(0, 0.0, "the of and", 3, 5)], 1)
    assert records[0].ok and records[0].completion_tokens == 5 and records[0].prompt_tokens == 3


def test_open_loop_sends_on_schedule(standin):
    ep = Endpoint(standin, extras={"ignore_eos": True}, model="sm")
    offsets = [0.0, 0.05, 0.1, 0.3]
    specs = [RequestSpec(i, t, "the of and to", 4, 3) for i, t in enumerate(offsets)]
    records = run_open_loop(ep, specs)
    sends = np.array([r.send_s for r in records])
    assert np.allclose(sends - sends[0], offsets, atol=0.01)
    assert all(r.ok for r in records)


def test_request_body_renders_length_pinning_extras():
    spec = RequestSpec(3, 0.0, "a b c", 3, 17)
    ep = Endpoint("http://h:1", model="m", extras={"ignore_eos": True, "min_tokens": "{output_tokens}",
                                                   "stream_options": {"include_usage": True}})
    assert request_body(ep, spec) == {"model": "m", "max_tokens": 17, "stream": True, "prompt": "a b c",
                                      "ignore_eos": True, "min_tokens": 17, "stream_options": {"include_usage": True}}
    ep = Endpoint("http://h:1", model="m", api="chat", path="/v1/chat/completions",
                  extras={"generation_config": {"max_new_tokens": "{output_tokens}", "min_new_tokens": "{output_tokens}",
                                                "eos_token_id": None}},
                  json_string_fields=("generation_config",))
    body = request_body(ep, spec)
    assert body["messages"] == [{"role": "user", "content": "a b c"}]
    assert json.loads(body["generation_config"]) == {"max_new_tokens": 17, "min_new_tokens": 17, "eos_token_id": None}


class Decoy:
    """A server that records every request it receives."""

    def __init__(self, redirect_to: str | None = None):
        self.hits: list[str] = []
        self.redirect_to = redirect_to
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request):
        self.hits.append(f"{request.method} {request.path}")
        if self.redirect_to:
            raise web.HTTPTemporaryRedirect(self.redirect_to)
        return web.json_response({"choices": []})


def serve_in_thread(app: web.Application, port: int):
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def stop():
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.run_until_complete(runner.cleanup())
        loop.close()
    return stop


def test_load_generator_only_targets_the_configured_endpoint(standin, monkeypatch):
    decoy_port, redirect_port = free_port(), free_port()
    decoy = Decoy()
    redirector = Decoy(redirect_to=f"http://127.0.0.1:{decoy_port}/v1/completions")
    stops = [serve_in_thread(decoy.app, decoy_port), serve_in_thread(redirector.app, redirect_port)]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{decoy_port}")  # must be ignored
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{decoy_port}")
    try:
        before = get_json(standin + "/standin/stats")["requests_per_path"].get("/v1/completions", 0)
        ep = Endpoint(standin, extras={"ignore_eos": True}, model="sm")
        specs = [RequestSpec(i, 0.01 * i, "the of and", 3, 4) for i in range(8)]
        records = run_open_loop(ep, specs)
        assert all(r.ok for r in records)
        after = get_json(standin + "/standin/stats")["requests_per_path"]["/v1/completions"]
        assert after - before == 8
        bad = run_open_loop(Endpoint(f"http://127.0.0.1:{redirect_port}", model="sm"), specs[:2])
        assert all(r.error.startswith("HTTP 307") for r in bad)
        assert decoy.hits == [] and len(redirector.hits) == 2
    finally:
        for stop in stops:
            stop()


def test_hang_stops_the_run(tmp_path):
    path = tmp_path / "step.json"
    path.write_text(json.dumps(STEP))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "calibrate.standin", "--port", str(port), "--step-model", str(path),
                             "--hang-after-requests", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_health(f"http://127.0.0.1:{port}/health", proc)
        ep = Endpoint(f"http://127.0.0.1:{port}", extras={"ignore_eos": True}, model="sm", token_timeout_s=0.5)
        started = time.perf_counter()
        with pytest.raises(EngineHang, match="no bytes .* for 0.5 s"):
            run_closed_loop(ep, [RequestSpec(i, 0.0, "the of", 2, 3) for i in range(4)], 1)
        assert time.perf_counter() - started < 3.0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_prompts_have_controlled_lengths():
    builder = PromptBuilder(seed=7)
    for n in (1, 17, 512):
        assert approx_token_count(builder.prompt(5, n)) == n
    assert builder.prompt(5, 40) == PromptBuilder(seed=7).prompt(5, 40) != builder.prompt(6, 40)



def test_bursts_send_what_the_simulated_probe_replays():
    plan = BurstPlan.for_workload("humaneval", 3, 5.0, 20, 200, 4096)
    probe = SimulatedProbe(StepModel(**STEP), plan.input_tokens, plan.output_tokens, seed=3, burst_s=5.0,
                           min_requests=20, max_requests=200)
    for qps in (1.0, 13.0, 90.0):
        n = plan.size(qps)
        assert n == int(min(max(qps * 5.0, 20), 200))
        expected = np.cumsum(probe._gaps[:n]) / qps
        assert np.array_equal(plan.arrivals_s(qps), expected)
        inp, out = plan.lengths(qps)
        assert np.array_equal(inp, plan.input_tokens[:n]) and math.isclose(out.mean(), plan.output_tokens[:n].mean())


def test_chunked_context_runs_a_long_prompt_in_chunks_beside_decodes():
    """With chunked context a prompt longer than max_num_tokens is accepted and computed in chunks: two decoders
    leave 2048 - 2 budget tokens, so a 5,000-token prompt takes three iterations (2046, 2046, 908) and yields its
    first token at the end of the third; the iterations last what the step model says."""
    from calibrate.standin import StandinEngine

    step = StepModel(**dict(STEP, kv_capacity_tokens=16000, chunked_context=1))
    scale = 0.05

    async def scenario():
        engine = StandinEngine(step, time_scale=scale)
        task = asyncio.get_running_loop().create_task(engine.run())
        try:
            decoders = [engine.submit(10, 400) for _ in range(2)]
            await decoders[0].tokens.get()  # their prefill is done: they decode
            started = engine.iterations
            t0 = time.monotonic()
            long = engine.submit(5000, 2)
            position, done = await long.tokens.get()
            return engine.iterations - started, time.monotonic() - t0, position, done
        finally:
            task.cancel()

    iterations, elapsed, position, done = asyncio.run(scenario())
    assert (position, done) == (1, False)
    # the request waits for the iteration in flight (at most one decode step), then three chunk iterations
    assert iterations in (3, 4)
    bounds = [0, 2046, 4092, 5000]
    chunks_s = sum(step.iteration_s(3, 2 + b - a, 2 * 20, b - a, b * b - a * a) for a, b in zip(bounds, bounds[1:]))
    assert chunks_s * scale * 0.9 <= elapsed <= (chunks_s + step.iteration_s(2, 2, 2 * 20)) * scale + 0.03
    with pytest.raises(Exception, match="KV capacity"):
        StandinEngine(step).check(15990, 20)
    StandinEngine(step).check(5000, 2)  # no max_num_tokens limit with chunked context
