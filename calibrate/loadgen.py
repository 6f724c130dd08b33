"""The streaming load generator: OpenAI-compatible completions with open-loop or closed-loop arrivals.

* **Open loop** (``run_open_loop``): every request is sent at its own offset from the start (Poisson
  bursts from ``calibrate.arrivals``, or a trace's arrival times), whatever the server's state.
* **Closed loop** (``run_closed_loop``): ``concurrency`` clients each send their next request as soon
  as the previous one finished, which holds the batch at ``concurrency`` (fit runs).

Per request it records the send time, the time of every token chunk, ``usage.prompt_tokens`` and
``usage.completion_tokens`` (when the server reports usage; otherwise the number of token chunks),
and an error, if any. Output lengths are pinned by ``max_tokens`` plus the endpoint's request extras
(``ignore_eos``/``min_tokens`` for vLLM, TensorRT-LLM and the stand-in; a ``generation_config`` JSON
string for ``transformers serve``).

The client only ever talks to the one URL of its ``Endpoint``: redirects are not followed (a 3xx is
recorded as an error), proxy settings from the environment are ignored, and nothing else is derived
from server responses.

Hang detection: a request that receives no bytes for ``token_timeout_s`` stops the run with
``EngineHang``; a monitor coroutine (engine liveness) can stop it with its own exception.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

import aiohttp

OUTPUT_PLACEHOLDER = "{output_tokens}"
INPUT_PLACEHOLDER = "{input_tokens}"


class EngineFailure(RuntimeError):
    """The engine died, stopped answering, or hung while a measurement ran."""

    kind = "failure"


class EngineHang(EngineFailure):
    kind = "hang"


class EngineCrashed(EngineFailure):
    kind = "crash"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to send requests; the load generator targets ``url`` and nothing else."""

    base_url: str  # scheme://host:port
    path: str = "/v1/completions"
    api: str = "completions"  # "completions" (prompt) or "chat" (messages)
    model: str = "model"
    extras: dict = field(default_factory=dict)  # merged into every body; "{output_tokens}" is replaced
    json_string_fields: tuple[str, ...] = ()  # extras whose value the server wants as a JSON string
    token_timeout_s: float = 60.0
    request_timeout_s: float = 600.0
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.api not in ("completions", "chat"):
            raise ValueError(f"endpoint api must be 'completions' or 'chat', got {self.api!r}")
        if not self.path.startswith("/"):
            raise ValueError(f"endpoint path must start with '/', got {self.path!r}")
        if not self.base_url.startswith(("http://", "https://")) or self.base_url.endswith("/"):
            raise ValueError(f"endpoint base_url must be http(s)://host:port without a trailing '/', got {self.base_url!r}")

    @property
    def url(self) -> str:
        return self.base_url + self.path


@dataclass(frozen=True, slots=True)
class RequestSpec:
    index: int
    send_offset_s: float  # open loop: when to send, from the run's start; closed loop: ignored
    prompt: str
    input_tokens: int  # intended prompt length
    output_tokens: int  # pinned output length


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the client saw it; times in seconds from the run's start (perf_counter)."""

    index: int
    send_s: float
    first_token_s: float  # NaN when no token arrived
    finish_s: float  # time of the last token; NaN when the request did not finish
    token_times_s: tuple[float, ...]
    input_tokens: int
    output_tokens: int
    prompt_tokens: int  # from usage (or the intended length when the server reports none)
    completion_tokens: int  # from usage (or the number of token chunks)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and math.isfinite(self.finish_s)


def _render(value: Any, spec: RequestSpec) -> Any:
    if isinstance(value, str):
        if value == OUTPUT_PLACEHOLDER:
            return spec.output_tokens
        if value == INPUT_PLACEHOLDER:
            return spec.input_tokens
        return value
    if isinstance(value, dict):
        return {k: _render(v, spec) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, spec) for v in value]
    return value


def request_body(endpoint: Endpoint, spec: RequestSpec) -> dict:
    """The JSON body of one request: model, prompt or messages, max_tokens, stream, then the extras."""
    body: dict[str, Any] = {"model": endpoint.model, "max_tokens": spec.output_tokens, "stream": True}
    if endpoint.api == "chat":
        body["messages"] = [{"role": "user", "content": spec.prompt}]
    else:
        body["prompt"] = spec.prompt
    for key, value in _render(dict(endpoint.extras), spec).items():
        body[key] = json.dumps(value) if key in endpoint.json_string_fields else value
    return body


def _token_text(chunk: dict, api: str) -> str | None:
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    if api == "chat":
        delta = choice.get("delta") or {}
        text = delta.get("content")
    else:
        text = choice.get("text")
    return text if isinstance(text, str) and text != "" else None


async def _one_request(session: aiohttp.ClientSession, endpoint: Endpoint, spec: RequestSpec, t0: float) -> RequestRecord:
    body = request_body(endpoint, spec)
    times: list[float] = []
    usage: dict = {}
    error = ""
    send = time.perf_counter() - t0
    timeout = aiohttp.ClientTimeout(total=endpoint.request_timeout_s, sock_connect=endpoint.connect_timeout_s,
                                    sock_read=endpoint.token_timeout_s)
    try:
        async with session.post(endpoint.url, json=body, allow_redirects=False, timeout=timeout) as resp:
            if resp.status != 200:
                text = (await resp.text())[:300]
                error = f"HTTP {resp.status}: {text}"
            else:
                async for raw in resp.content:
                    line = raw.strip()
                    if not line or not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        break
                    now = time.perf_counter() - t0
                    try:
                        chunk = json.loads(payload)
                    except json.JSONDecodeError:
                        error = f"malformed SSE chunk: {payload[:120]!r}"
                        break
                    if isinstance(chunk, dict) and chunk.get("error"):
                        error = f"server error: {str(chunk['error'])[:200]}"
                        break
                    if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
                    if isinstance(chunk, dict) and _token_text(chunk, endpoint.api) is not None:
                        times.append(now)
    except asyncio.TimeoutError:
        raise EngineHang(f"no bytes from {endpoint.url} for {endpoint.token_timeout_s:g} s "
                         f"(request {spec.index}, {len(times)} tokens received)") from None
    except aiohttp.ClientError as exc:
        error = f"{type(exc).__name__}: {exc}"
    if not error and not times:
        error = "stream ended without a token"
    completion = int(usage.get("completion_tokens", len(times))) if usage else len(times)
    prompt = int(usage.get("prompt_tokens", spec.input_tokens)) if usage else spec.input_tokens
    first = times[0] if times else math.nan
    finish = times[-1] if times and not error else math.nan
    return RequestRecord(spec.index, send, first, finish, tuple(times), spec.input_tokens, spec.output_tokens,
                         prompt, completion, error)


Monitor = Callable[[], Awaitable[None]]


async def _with_monitor(work: Awaitable[list[RequestRecord]], monitor: Monitor | None) -> list[RequestRecord]:
    """Run ``work``; if ``monitor`` raises first (engine died), cancel the work and re-raise."""
    work_task = asyncio.ensure_future(work)
    if monitor is None:
        return await work_task
    monitor_task = asyncio.ensure_future(monitor())
    done, _ = await asyncio.wait({work_task, monitor_task}, return_when=asyncio.FIRST_COMPLETED)
    if monitor_task in done:
        work_task.cancel()
        await asyncio.gather(work_task, return_exceptions=True)
        monitor_task.result()  # raises the monitor's EngineFailure
        raise EngineCrashed("the engine monitor stopped without a reason")
    monitor_task.cancel()
    await asyncio.gather(monitor_task, return_exceptions=True)
    return work_task.result()


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(trust_env=False, connector=aiohttp.TCPConnector(limit=0, force_close=False))


async def _open_loop(endpoint: Endpoint, specs: Sequence[RequestSpec]) -> list[RequestRecord]:
    async with _session() as session:
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        base = loop.time()
        tasks: list[asyncio.Task] = []
        try:
            for spec in sorted(specs, key=lambda s: s.send_offset_s):
                delay = base + spec.send_offset_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(_one_request(session, endpoint, spec, t0)))
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _closed_loop(endpoint: Endpoint, specs: Sequence[RequestSpec], concurrency: int) -> list[RequestRecord]:
    queue: asyncio.Queue[RequestSpec] = asyncio.Queue()
    for spec in specs:
        queue.put_nowait(spec)
    records: list[RequestRecord] = []
    async with _session() as session:
        t0 = time.perf_counter()

        async def client() -> None:
            while True:
                try:
                    spec = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                records.append(await _one_request(session, endpoint, spec, t0))

        workers = [asyncio.ensure_future(client()) for _ in range(concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    return sorted(records, key=lambda r: r.index)


def run_open_loop(endpoint: Endpoint, specs: Sequence[RequestSpec], monitor: Monitor | None = None) -> list[RequestRecord]:
    """Send every spec at its offset; returns one record per spec (ordered by index)."""
    records = asyncio.run(_with_monitor(_open_loop(endpoint, specs), monitor))
    return sorted(records, key=lambda r: r.index)


def run_closed_loop(endpoint: Endpoint, specs: Sequence[RequestSpec], concurrency: int,
                    monitor: Monitor | None = None) -> list[RequestRecord]:
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    return asyncio.run(_with_monitor(_closed_loop(endpoint, specs, concurrency), monitor))
