"""`prompttune serve`: an OpenAI-compatible HTTP server that applies learned prompts to one frozen model.

    GET  /health                 liveness, no auth
    GET  /v1/models              the backbone and every artifact, by name
    POST /v1/completions         `model` = an artifact (the prompt text goes through its template,
                                 its prompt in place) or the backbone (plain text); `stream` supported
    POST /v1/chat/completions    the backbone: its chat template; an artifact: the last user message
                                 through the artifact's template
    POST /v1/classify            {"model", "input": [text | {field: text}, ...]} -> label + scores per input

A generative artifact (its task's answer is text) answers on the two completion routes with its own
settings: the text fills its template's field (a JSON object string fills a template with several),
answers end at its stop strings (plus the request's `stop`), and max_tokens defaults to its recorded
answer length (never over --max-tokens-limit). /v1/classify refuses it with a 400 that says why.

An engine whose `inputs` are "images" (a CLIP backbone, serve/clip.py) takes base64 images on
`/v1/classify` instead, and the text routes answer 400. The app asks the engine, never the kind.

Every error, whatever raised it, is OpenAI-style JSON, `{"error": {"message", "type", "code", "param"}}`,
with a status that says whose fault it is (4xx) or that the server could not do it (500, 503 busy or
shutting down, 504 out of time); a 500 logs its traceback on the server only. Every wait is bounded
by `request_timeout`, and a request whose client went away is dropped from the engine's queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from ..errors import PromptTuneError
from .engine import Engine
from .guard import RequestGuard, error_body
from .scheduler import EngineClosed, Overloaded, RequestTimeout
from .served import merge_stops
from .specs import public_name
from .sse import sse_events

log = logging.getLogger("prompttune.serve")
SEED_MAX = 2**63 - 1  # torch.manual_seed's range


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, logit_bias...)


class CompletionBody(_Body):
    model: str
    prompt: str | list[str]
    max_tokens: int | None = Field(None, ge=1)  # default: 16, or a generative artifact's answer length
    temperature: float | None = Field(None, ge=0.0, le=2.0)  # default: see ServedPrompt.default_temperature
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    stop: str | list[str] | None = None
    raw: bool = False  # prompttune extension: do not put the prompt through the artifact's template


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | None = ""


class ChatBody(_Body):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)  # default: see ServedPrompt.default_temperature
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    stop: str | list[str] | None = None


class ClassifyBody(_Body):
    model: str
    input: str | list[str | dict[str, str]] = Field(min_length=1)


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error"):
        self.status, self.message, self.code, self.kind = status, message, code, kind


def engine_error(exc: BaseException) -> APIError:
    """The answer for an exception out of the engine (or a handler)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, PromptTuneError):
        return APIError(400, str(exc), "invalid_input")
    if isinstance(exc, Overloaded):
        return APIError(503, str(exc), "server_busy", "server_error")
    if isinstance(exc, EngineClosed):
        return APIError(503, str(exc), "shutting_down", "server_error")
    if isinstance(exc, RequestTimeout):
        return APIError(504, f"{exc} (--request-timeout)", "request_timeout", "server_error")
    log.error("request failed", exc_info=exc)
    return APIError(500, f"internal error ({type(exc).__name__}); the server's log has the details", "internal_error",
                    "server_error")


def create_app(engine: Engine, api_key: str | None = None, max_body_bytes: int = 1_000_000,
               max_tokens_limit: int = 512, max_inputs: int = 256, max_request_rows: int = 64,
               request_timeout: float = 60.0, body_timeout: float = 30.0, max_image_pixels: int = 4096 * 4096,
               max_decoded_bytes: int = 256 * 2**20, max_decoding_bytes: int | None = None):
    """The FastAPI app over `engine`. `api_key`: require `Authorization: Bearer <key>` (not on /health).
    `max_request_rows`: generated sequences per request (n x prompts); `request_timeout`: seconds a
    request may wait and run; `body_timeout`: seconds to receive a body; `max_image_pixels` and
    `max_decoded_bytes`: per image, and per request, for a CLIP engine; `max_decoding_bytes`: what all
    requests may be decoding at once (default 4 x `max_decoded_bytes`)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.background import BackgroundTask
    from starlette.exceptions import HTTPException

    app = FastAPI(title="prompttune serve", version="1")
    app.state.engine = engine
    app.add_middleware(RequestGuard, api_key=api_key, max_body_bytes=max_body_bytes, body_timeout=body_timeout)

    def error(status: int, message: str, code: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse(error_body(message, code, kind), status)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return error(exc.status, exc.message, exc.code, exc.kind)

    @app.exception_handler(RequestValidationError)
    async def _bad_body(_: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        if first.get("type") == "json_invalid":
            return error(400, f"request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})",
                         "invalid_json")
        return error(400, f"{where}: {first.get('msg')}", "invalid_body")

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            return error(404, f"no route {request.url.path}; see GET /v1/models, POST /v1/completions, "
                         "/v1/chat/completions, /v1/classify", "not_found")
        if exc.status_code == 405:
            return error(405, f"{request.method} is not allowed on {request.url.path}", "method_not_allowed")
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            return error(400, f"request body is not valid UTF-8 JSON ({exc.__cause__.reason} at byte "
                         f"{exc.__cause__.start})", "invalid_json")
        kind = "server_error" if exc.status_code >= 500 else "invalid_request_error"
        return error(exc.status_code, str(exc.detail), "http_error", kind)

    @app.exception_handler(PromptTuneError)
    async def _user_error(_: Request, exc: PromptTuneError):
        return error(400, str(exc), "invalid_input")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):  # starlette then re-raises: uvicorn logs the traceback
        return error(500, f"internal error ({type(exc).__name__}); the server's log has the details",
                     "internal_error", "server_error")

    def served(name: str):
        try:
            return engine.get(name)
        except KeyError:
            raise APIError(404, f"model '{name}' is not served here (available: {', '.join(engine.prompts)})",
                           "model_not_found") from None

    def token_limit(value: int | None, default: int) -> int:
        """The request's max_tokens, refused over the server's limit; without one, `default` (capped)."""
        if value is None:
            return min(default, max_tokens_limit)
        if value > max_tokens_limit:
            raise APIError(400, f"max_tokens {value} is over this server's limit of {max_tokens_limit} "
                           "(--max-tokens-limit)", "max_tokens_too_large")
        return value

    def inputs_of(body: ClassifyBody) -> list:
        inputs = [body.input] if isinstance(body.input, str) else body.input
        if len(inputs) > max_inputs:
            raise APIError(400, f"{len(inputs)} inputs; the limit is {max_inputs} per request (--max-inputs)",
                           "too_many_inputs")
        return inputs

    def submit(make_future):
        try:
            return make_future()
        except (Overloaded, EngineClosed) as exc:
            raise engine_error(exc) from None

    async def run(future, request: Request) -> Any:
        """The engine's answer; 504 after `request_timeout`; the work is dropped if the client goes away."""
        waiter = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            done, _ = await asyncio.wait({waiter, gone}, timeout=request_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if waiter not in done:
            waiter.cancel()  # cancels the engine's future: the worker skips or stops its rows
            if gone in done:
                raise APIError(499, "the client closed the connection", "client_closed")
            raise engine_error(RequestTimeout(f"the request did not finish within {request_timeout:g} s"))
        try:
            return waiter.result()
        except Exception as exc:  # noqa: BLE001
            raise engine_error(exc) from None

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": len(engine.prompts), "queued_rows": engine.queue.pending, **engine.stats}

    @app.get("/v1/models")
    async def models():
        now = int(time.time())
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": now, "owned_by": "prompttune", **p.describe()}
            for name, p in engine.prompts.items()
        ]}

    if engine.inputs == "images":  # e.g. a CLIP backbone: images in, labels out, no text generation
        from starlette.concurrency import run_in_threadpool

        from .clip import DecodeBudget, decode_request_images

        budget = DecodeBudget(max_decoding_bytes or 4 * max_decoded_bytes)

        @app.post("/v1/classify")
        async def classify_images(body: ClassifyBody, request: Request):
            served(body.model)
            try:
                images = await run_in_threadpool(decode_request_images, inputs_of(body), max_image_pixels,
                                                 max_decoded_bytes, budget)
            except Overloaded as exc:
                raise engine_error(exc) from None
            results = await run(submit(lambda: engine.classify(body.model, images, timeout=request_timeout)), request)
            return {"object": "list", "model": body.model, "data": [
                {"index": i, "label": label, "scores": scores} for i, (label, scores) in enumerate(results)
            ]}

        async def no_text():
            raise APIError(400, f"this server runs an image model ({public_name(engine.backbone.model_id)}): it "
                           "classifies images (POST /v1/classify) and does not generate text", "not_a_text_model")

        app.post("/v1/completions")(no_text)
        app.post("/v1/chat/completions")(no_text)
        return app

    @app.post("/v1/classify")
    async def classify(body: ClassifyBody, request: Request):
        prompt = served(body.model)
        if not prompt.classifies:
            raise APIError(400, prompt.why_not_classify(), "not_a_classifier")
        inputs = inputs_of(body)
        for i, item in enumerate(inputs):  # a missing field is the client's error, found before queueing
            try:
                prompt.predictor.render(item)
            except PromptTuneError as exc:
                raise APIError(400, f"input[{i}]: {exc}", "invalid_input") from None
        results = await run(submit(lambda: engine.classify(body.model, inputs, timeout=request_timeout)), request)
        return {"object": "list", "model": body.model, "data": [
            {"index": i, "label": label, "scores": scores} for i, (label, scores) in enumerate(results)
        ]}

    def generation_inputs(name: str, texts: list[str], render: bool, n: int) -> list[str]:
        prompt = served(name)
        if not prompt.generates:
            raise APIError(400, f"'{name}' is a boosted ensemble: it classifies (POST /v1/classify) and does not "
                           "generate text", "not_a_generator")
        if len(texts) * n > max_request_rows:
            raise APIError(400, f"{len(texts)} prompt(s) x n={n} = {len(texts) * n} sequences; the limit is "
                           f"{max_request_rows} per request (--max-request-rows)", "too_many_rows")
        if render and prompt.predictor is not None:
            texts = [_rendered(prompt, t, i) for i, t in enumerate(texts)]
        if prompt.soft is None or not prompt.mixable_generate:  # only a soft prompt may continue from nothing
            for i, t in enumerate(texts):
                if not t:
                    raise APIError(400, f"prompt[{i}] is empty: give some text to continue", "empty_prompt")
        return texts

    async def complete(request: Request, name: str, texts: list[str], max_tokens: int, temperature: float, n: int,
                       seed: int | None, stop) -> tuple[list[tuple], dict[str, int]]:
        rows = [t for t in texts for _ in range(n)]
        future = submit(lambda: engine.generate(name, rows, max_tokens, temperature, seed, timeout=request_timeout,
                                                stop=stop))
        out = await run(future, request)  # cut at the artifact's and the request's stop strings
        prompt_tokens = sum(out[i * n][1] for i in range(len(texts)))  # each prompt once, however many choices
        completion = sum(o[2] for o in out)
        return out, {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                     "total_tokens": prompt_tokens + completion}

    def stream(name: str, text: str, max_tokens: int, temperature: float, seed: int | None, stop, piece):
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone (server stopped)
                pass

        future = submit(lambda: engine.stream(name, text, max_tokens, lambda t: put(("text", t)), temperature, seed,
                                              timeout=request_timeout, stop=stop))
        future.add_done_callback(lambda f: put(("end", f)))
        stops = merge_stops(served(name).stops, stop)
        return StreamingResponse(sse_events(queue, future, piece, stops, request_timeout, _error_event),
                                 media_type="text/event-stream",
                                 background=BackgroundTask(future.cancel))  # also if the client left before it began

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or len(prompts) > max_inputs:
            raise APIError(400, f"prompt: give 1 to {max_inputs} prompts", "invalid_prompt")
        prompt = served(body.model)
        max_tokens = token_limit(body.max_tokens, prompt.default_max_tokens(16))
        body.temperature = prompt.default_temperature() if body.temperature is None else body.temperature
        texts = generation_inputs(body.model, prompts, not body.raw and prompt.predictor is not None, body.n)
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:
            if len(prompts) != 1 or body.n != 1:
                raise APIError(400, "stream: one prompt and n=1 per streamed request", "invalid_stream")

            def piece(delta: str, finish):
                return {"id": cid, "object": "text_completion", "created": created, "model": body.model,
                        "choices": [{"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}]}

            return stream(body.model, texts[0], max_tokens, body.temperature, body.seed, body.stop, piece)
        out, usage = await complete(request, body.model, texts, max_tokens, body.temperature, body.n, body.seed,
                                    body.stop)
        return {
            "id": cid, "object": "text_completion", "created": created, "model": body.model,
            "choices": [{"index": i, "text": t, "logprobs": None, "finish_reason": f} for i, (t, _, _, f) in
                        enumerate(out)],
            "usage": usage,
        }

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody, request: Request):
        prompt = served(body.model)
        max_tokens = token_limit(body.max_completion_tokens or body.max_tokens, prompt.default_max_tokens(128))
        body.temperature = prompt.default_temperature() if body.temperature is None else body.temperature
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content or ""}
                    for m in body.messages]
        if prompt.predictor is None:
            tok = engine.backbone.tokenizer
            if not getattr(tok, "chat_template", None):
                raise APIError(400, f"'{body.model}' has no chat template; use /v1/completions", "no_chat_template")
            text, render = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), False
        else:
            users = [m["content"] for m in messages if m["role"] == "user"]
            if not users:
                raise APIError(400, "messages: an artifact needs a user message (its input text)", "no_user_message")
            text, render = users[-1], True
        final = generation_inputs(body.model, [text], render, body.n)[0]
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:
            if body.n != 1:
                raise APIError(400, "stream: n=1 per streamed request", "invalid_stream")

            def piece(delta: str, finish):
                d = {"role": "assistant", "content": delta} if finish is None else {}
                return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                        "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}

            return stream(body.model, final, max_tokens, body.temperature, body.seed, body.stop, piece)
        out, usage = await complete(request, body.model, [final], max_tokens, body.temperature, body.n, body.seed,
                                    body.stop)
        return {
            "id": cid, "object": "chat.completion", "created": created, "model": body.model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
                        for i, (t, _, _, f) in enumerate(out)],
            "usage": usage,
        }

    return app


async def _client_gone(request) -> None:
    """Returns once the client has disconnected (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _rendered(prompt, text: str, i: int) -> str:
    """prompt[i] through the artifact's template; a missing field or a bad JSON object is the client's error."""
    try:
        return prompt.render(text)
    except PromptTuneError as exc:
        raise APIError(400, f"prompt[{i}]: {exc}", "invalid_input") from None


def _error_event(exc: BaseException) -> dict[str, Any]:
    """The body of a stream's error event: the error the same failure gets without streaming."""
    err = engine_error(exc)
    return error_body(err.message, err.code, err.kind)
