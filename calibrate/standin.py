"""A stand-in serving engine: a real OpenAI-compatible HTTP server whose token timing follows a step model.

    python -m calibrate.standin --port 8000 --step-model step.json [--time-scale 1.0] [--host 127.0.0.1]
                                [--model-name NAME] [--hang-after-requests N --hang-once-file PATH]

It is what the calibration tests (and the demo plan) profile instead of a GPU engine. One asyncio task
runs the engine semantics of ``sim/instance.py`` iteration by iteration in real time:

* requests wait in FIFO order; at each iteration boundary the head of the queue is admitted while the
  batch has room (``max_batch``), its whole KV footprint (prompt + output tokens) fits what is not yet
  reserved, and its prompt fits the iteration's token budget (``max_num_tokens``); nothing overtakes
  the head;
* an iteration prefills the newly admitted prompts (which yields their first token) together with
  one decode step of every running request; a request finishes at the end of the iteration that
  produces its last token and frees its KV reservation;
* with chunked context (``StepModel.chunked_context == 1``, the semantics of ``sim.instance``): the token
  budget ``max_num_tokens`` covers one token per decoding sequence plus the prompt chunks of the iteration;
  each iteration the admitted prompts not yet fully computed get their next chunk (admission order), then
  requests are admitted while the batch (decoding + prefilling) has room, the KV footprint fits and a budget
  token is left, each with a chunk ``min(rest of its prompt, budget left)``; a chunk ``[o, o + c)`` adds ``c``
  prefill tokens and ``(o + c)^2 - o^2`` attention; the first token comes with the last chunk. A prompt
  longer than ``max_num_tokens`` is then accepted;
* the iteration lasts ``StepModel.iteration_s(...) * time_scale`` wall seconds. Iterations are timed
  against absolute deadlines (each ends ``duration`` after the previous one ended), so event-loop
  latency does not accumulate; keep iterations at a few milliseconds or more for asyncio to time
  them accurately.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions``
(streaming as SSE ``data: {...}`` chunks, one per token, then a chunk with ``usage`` {prompt_tokens,
completion_tokens} and ``data: [DONE]``; non-streaming returns one JSON body), and
``GET /standin/config`` (the step model, time scale and capacities, labelled as the stand-in's) and
``GET /standin/stats`` (requests seen per path). Prompt tokens are counted by the word approximation
of ``calibrate.prompts`` (or the length of a token-id list). ``max_tokens`` (default 16), ``min_tokens``
and ``ignore_eos`` are honoured: without ``ignore_eos`` a request stops at a deterministic pseudo-EOS
position (a hash of its prompt), but never before ``min_tokens``. A request that can never fit
(prompt + max_tokens over the KV capacity, or, without chunked context, a prompt over ``max_num_tokens``)
gets HTTP 400.

The stand-in reports no energy: it has no GPU, and it does not pretend to.

Prefix caching (``--prefix-block-tokens B``, off by default): like engines that share KV blocks, the stand-in
remembers every complete block of ``B`` prompt words it has prefilled (a chained hash of the words, kept
forever: this engine never evicts), and a new prompt skips the prefill of its leading cached blocks, at most
``floor((L - 1) / B) * B`` of its ``L`` tokens: the iteration counts only the uncached tokens, and its
attention term ``L^2 - hit^2``. It lets the tests check that calibration detects prefix reuse.

Fault injection for tests: ``--hang-after-requests N`` stops producing tokens once N requests have
been received (the server keeps answering /health), so hang detection can be exercised; with
``--hang-once-file PATH`` it hangs only when PATH does not exist yet (and creates it), so a restarted
stand-in behaves normally.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from calibrate.prompts import approx_token_count, stable_hash, word_at
from profiles.step_model import StepModel, StepModelError

STANDIN_VERSION = "qfleet-standin 1 (calibrate/standin.py)"


class RequestRejected(ValueError):
    """A request the engine can never serve; answered with HTTP 400."""


@dataclass(eq=False)
class _Request:
    rid: int
    input_tokens: int
    output_tokens: int
    tokens: asyncio.Queue = field(default_factory=asyncio.Queue)
    generated: int = 0
    cancelled: bool = False
    blocks: tuple[int, ...] = ()  # chained hashes of the prompt's complete blocks (prefix caching on)
    cached_tokens: int = 0  # tokens of the prompt whose prefill a cached prefix saved
    prefilled: int = 0  # chunked context: prompt tokens computed (or cached) so far


class StandinEngine:
    """The iteration loop; ``submit`` from request handlers, ``run`` as one task."""

    def __init__(self, step: StepModel, time_scale: float = 1.0, hang_after_requests: int | None = None,
                 prefix_block_tokens: int = 0):
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        if prefix_block_tokens < 0:
            raise ValueError(f"prefix_block_tokens must be >= 0, got {prefix_block_tokens}")
        self.prefix_block_tokens = prefix_block_tokens
        self.cached_blocks: set[int] = set()
        self.step = step
        self.time_scale = time_scale
        self.hang_after_requests = hang_after_requests
        self.waiting: deque[_Request] = deque()
        self.running: list[_Request] = []
        self.prefilling: list[_Request] = []  # chunked context: admitted, prompt not yet fully computed
        self.kv_reserved = 0
        self.received = 0
        self.iterations = 0
        self._wake = asyncio.Event()
        self._ids = 0

    def check(self, input_tokens: int, output_tokens: int) -> None:
        step = self.step
        if input_tokens < 1:
            raise RequestRejected("the prompt has no tokens")
        if input_tokens + output_tokens > step.kv_capacity_tokens:
            raise RequestRejected(
                f"prompt ({input_tokens} tokens) + max_tokens ({output_tokens}) exceed the KV capacity of "
                f"{step.kv_capacity_tokens} tokens"
            )
        if input_tokens > step.max_num_tokens and not step.chunked_context:
            raise RequestRejected(f"prompt of {input_tokens} tokens exceeds max_num_tokens={step.max_num_tokens}")

    def block_hashes(self, text: str) -> tuple[int, ...]:
        """Chained hashes of the prompt's complete blocks of ``prefix_block_tokens`` words."""
        b = self.prefix_block_tokens
        words = text.split()
        hashes, parent = [], 0
        for start in range(0, len(words) - b + 1, b) if b else ():
            parent = stable_hash(f"{parent}|{' '.join(words[start:start + b])}")
            hashes.append(parent)
        return tuple(hashes)

    def _cached_tokens(self, req: _Request) -> int:
        b = self.prefix_block_tokens
        hit = 0
        for h in req.blocks[:max(req.input_tokens - 1, 0) // b if b else 0]:
            if h not in self.cached_blocks:
                break
            hit += b
        return hit

    def submit(self, input_tokens: int, output_tokens: int, text: str = "") -> _Request:
        self.check(input_tokens, output_tokens)
        self._ids += 1
        self.received += 1
        req = _Request(self._ids, input_tokens, output_tokens,
                       blocks=self.block_hashes(text) if self.prefix_block_tokens else ())
        self.waiting.append(req)
        self._wake.set()
        return req

    @property
    def hung(self) -> bool:
        return self.hang_after_requests is not None and self.received >= self.hang_after_requests

    def _admit(self) -> list[_Request]:
        step = self.step
        room = step.max_batch - len(self.running)
        budget = step.max_num_tokens
        new: list[_Request] = []
        while self.waiting and room > 0:
            head = self.waiting[0]
            if head.cancelled:
                self.waiting.popleft()
                continue
            need = head.input_tokens + head.output_tokens
            if self.kv_reserved + need > step.kv_capacity_tokens or head.input_tokens > budget:
                break
            self.waiting.popleft()
            new.append(head)
            room -= 1
            budget -= head.input_tokens
            self.kv_reserved += need
        return new

    def _schedule_chunks(self) -> list[tuple[_Request, int]]:
        """Chunked context: the part-way prompts' next chunks (admission order), then admissions while the batch
        (decoding + prefilling) has room, the KV footprint fits and a budget token is left; (request, chunk)."""
        step = self.step
        budget = step.max_num_tokens - len(self.running)
        chunks: list[tuple[_Request, int]] = []
        for req in self.prefilling:
            if budget <= 0:
                break
            c = min(req.input_tokens - req.prefilled, budget)
            chunks.append((req, c))
            budget -= c
        while self.waiting and len(self.running) + len(self.prefilling) < step.max_batch and budget > 0:
            head = self.waiting[0]
            if head.cancelled:
                self.waiting.popleft()
                continue
            need = head.input_tokens + head.output_tokens
            if self.kv_reserved + need > step.kv_capacity_tokens:
                break
            self.waiting.popleft()
            self.kv_reserved += need
            head.cached_tokens = self._cached_tokens(head) if self.prefix_block_tokens else 0
            head.prefilled = head.cached_tokens
            self.prefilling.append(head)
            c = min(head.input_tokens - head.prefilled, budget)
            chunks.append((head, c))
            budget -= c
        return chunks

    def _release(self, req: _Request) -> None:
        self.kv_reserved -= req.input_tokens + req.output_tokens

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        end: float | None = None
        while True:
            for held in (self.running, self.prefilling):
                for req in [r for r in held if r.cancelled]:
                    held.remove(req)
                    self._release(req)
            if self.hung:
                await asyncio.Event().wait()  # never set: tokens stop, the server still answers
            if not self.waiting and not self.running and not self.prefilling:
                self._wake.clear()
                await self._wake.wait()
                end = None
            batch = len(self.running)
            chunks: list[tuple[_Request, int]] = []
            if self.step.chunked_context:
                chunks = self._schedule_chunks()
                new = []
                n_seq = batch + len(chunks)
                prefill = sum(c for _, c in chunks)
                prefill_sq = sum((r.prefilled + c) ** 2 - r.prefilled ** 2 for r, c in chunks)
            else:
                new = self._admit()
                for r in new:
                    r.cached_tokens = self._cached_tokens(r) if self.prefix_block_tokens else 0
                n_seq = batch + len(new)
                prefill = sum(r.input_tokens - r.cached_tokens for r in new)
                prefill_sq = sum(r.input_tokens * r.input_tokens - r.cached_tokens * r.cached_tokens for r in new)
            if n_seq == batch and not self.running:
                continue  # only cancelled requests were waiting
            kv = sum(r.input_tokens + r.generated for r in self.running)
            duration = self.step.iteration_s(n_seq, batch + prefill, kv, prefill, prefill_sq)
            start = loop.time() if end is None else end
            end = start + duration * self.time_scale
            delay = end - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
            self.iterations += 1
            for r, c in chunks:  # chunked context: a prompt whose last chunk ran yields its first token now
                r.prefilled += c
                if r.prefilled >= r.input_tokens:
                    self.prefilling.remove(r)
                    new.append(r)
            for r in new:
                self.cached_blocks.update(r.blocks)
            still: list[_Request] = []
            for req in self.running:
                self._emit(req, still)
            for req in new:
                self._emit(req, still)
            self.running = still

    def _emit(self, req: _Request, still: list[_Request]) -> None:
        if req.cancelled:
            self._release(req)
            return
        req.generated += 1
        done = req.generated >= req.output_tokens
        req.tokens.put_nowait((req.generated, done))
        if done:
            self._release(req)
        else:
            still.append(req)


def natural_output_tokens(prompt_text: str, max_tokens: int) -> int:
    """Where a pseudo-EOS would stop the request: deterministic in the prompt, in [1, max_tokens]."""
    return 1 + stable_hash(prompt_text) % max(max_tokens, 1)


def output_length(prompt_text: str, max_tokens: int, min_tokens: int, ignore_eos: bool) -> int:
    if ignore_eos:
        return max_tokens
    return max(min(natural_output_tokens(prompt_text, max_tokens), max_tokens), min(min_tokens, max_tokens))


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error", "code": status}},
                             status=status)


def _int_field(body: dict, name: str, default: int, minimum: int) -> int:
    value = body.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RequestRejected(f"'{name}' must be an integer >= {minimum}, got {value!r}")
    return value


def _prompt_of(body: dict, chat: bool) -> tuple[str, int]:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestRejected("'messages' must be a non-empty list")
        text = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        return text, approx_token_count(text)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt, approx_token_count(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return " ".join(map(str, prompt)), len(prompt)
    raise RequestRejected("'prompt' must be a string or a list of token ids")


class StandinServer:
    """The aiohttp application around one engine."""

    def __init__(self, step: StepModel, time_scale: float, model_name: str, hang_after_requests: int | None,
                 prefix_block_tokens: int = 0):
        self.engine = StandinEngine(step, time_scale, hang_after_requests, prefix_block_tokens)
        self.model_name = model_name
        self.stats: Counter[str] = Counter()
        self.app = web.Application()
        self.app.router.add_get("/health", self.health)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_post("/v1/chat/completions", self.chat_completions)
        self.app.router.add_get("/standin/config", self.config)
        self.app.router.add_get("/standin/stats", self.get_stats)
        self.app.on_startup.append(self._start)
        self.app.on_cleanup.append(self._stop)
        self._task: asyncio.Task | None = None

    async def _start(self, app: web.Application) -> None:
        self._task = asyncio.get_running_loop().create_task(self.engine.run())

    async def _stop(self, app: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()

    async def health(self, request: web.Request) -> web.Response:
        self.stats[request.path] += 1
        return web.json_response({"status": "ok"})

    async def models(self, request: web.Request) -> web.Response:
        self.stats[request.path] += 1
        return web.json_response({"object": "list", "data": [{
            "id": self.model_name, "object": "model", "owned_by": "qfleet-standin",
            "max_model_len": self.engine.step.kv_capacity_tokens,
        }]})

    async def config(self, request: web.Request) -> web.Response:
        self.stats[request.path] += 1
        step = self.engine.step
        return web.json_response({
            "engine": STANDIN_VERSION,
            "note": "qfleet stand-in engine: timing follows the step model below; it measures no energy",
            "time_scale": self.engine.time_scale,
            "step_model": step.as_dict(),
            "kv_capacity_tokens": step.kv_capacity_tokens,
            "max_batch": step.max_batch,
            "max_num_tokens": step.max_num_tokens,
        })

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"requests_per_path": dict(self.stats), "iterations": self.engine.iterations,
                                  "received": self.engine.received})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        self.stats[request.path] += 1
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        try:
            text, input_tokens = _prompt_of(body, chat)
            max_tokens = _int_field(body, "max_tokens", 16, 1)
            min_tokens = _int_field(body, "min_tokens", 0, 0)
            ignore_eos = bool(body.get("ignore_eos", False))
            out = output_length(text, max_tokens, min_tokens, ignore_eos)
            self.engine.check(input_tokens, max_tokens)
            req = self.engine.submit(input_tokens, out, text)
        except RequestRejected as exc:
            return _error(400, str(exc))
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:16]}"
        created = int(time.time())
        finish_reason = "length" if out == max_tokens else "stop"
        usage = {"prompt_tokens": input_tokens, "completion_tokens": out, "total_tokens": input_tokens + out}
        if not body.get("stream", False):
            words = []
            while True:
                position, done = await req.tokens.get()
                words.append(word_at(req.rid + position))
                if done:
                    break
            content = " " + " ".join(words)
            choice = ({"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
                      if chat else {"index": 0, "text": content, "logprobs": None, "finish_reason": finish_reason})
            return web.json_response({"id": rid, "object": "chat.completion" if chat else "text_completion",
                                      "created": created, "model": self.model_name, "choices": [choice],
                                      "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        kind = "chat.completion.chunk" if chat else "text_completion"
        try:
            while True:
                position, done = await req.tokens.get()
                piece = " " + word_at(req.rid + position)
                reason = finish_reason if done else None
                choice = ({"index": 0, "delta": {"content": piece}, "finish_reason": reason} if chat
                          else {"index": 0, "text": piece, "logprobs": None, "finish_reason": reason})
                chunk = {"id": rid, "object": kind, "created": created, "model": self.model_name, "choices": [choice]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if done:
                    break
            final = {"id": rid, "object": kind, "created": created, "model": self.model_name, "choices": [],
                     "usage": usage}
            await response.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            req.cancelled = True
            raise
        return response


def load_step_model(path: Path) -> StepModel:
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"standin: step model file {path} not found") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"standin: {path} is not valid JSON ({exc})") from None
    if isinstance(values, dict) and "step_model" in values:
        values = values["step_model"]
    try:
        return StepModel.from_mapping(values, where=str(path))
    except StepModelError as exc:
        raise SystemExit(f"standin: {exc}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--step-model", type=Path, required=True, help="JSON file with the StepModel fields")
    parser.add_argument("--time-scale", type=float, default=1.0, help="wall seconds per step-model second")
    parser.add_argument("--model-name", default="standin")
    parser.add_argument("--hang-after-requests", type=int, default=None)
    parser.add_argument("--hang-once-file", type=Path, default=None)
    parser.add_argument("--prefix-block-tokens", type=int, default=0,
                        help="reuse cached prompt blocks of this many tokens (0: no prefix caching)")
    args = parser.parse_args(argv)
    step = load_step_model(args.step_model)
    hang = args.hang_after_requests
    if hang is not None and args.hang_once_file is not None:
        if args.hang_once_file.exists():
            hang = None
        else:
            args.hang_once_file.write_text("hung once\n")
    server = StandinServer(step, args.time_scale, args.model_name, hang, args.prefix_block_tokens)
    print(f"standin: serving {args.model_name} on http://{args.host}:{args.port} (time scale {args.time_scale})",
          flush=True)
    web.run_app(server.app, host=args.host, port=args.port, print=None, access_log=None,
                handle_signals=True, shutdown_timeout=1.0)


if __name__ == "__main__":
    main(sys.argv[1:])
