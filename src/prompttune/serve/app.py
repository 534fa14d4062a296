"""`prompttune serve`: an OpenAI-compatible HTTP server that applies learned prompts to one frozen model.

    GET  /health                 liveness, no auth
    GET  /v1/models              the backbone and every artifact, by name
    POST /v1/completions         `model` = an artifact (the prompt text goes through its template,
                                 its prompt in place) or the backbone (plain text); `stream` supported
    POST /v1/chat/completions    the backbone: its chat template; an artifact: the last user message
                                 through the artifact's template
    POST /v1/classify            {"model", "input": [text | {field: text}, ...]} -> label + scores per input

Over a CLIP backbone (serve/clip.py) `/v1/classify` takes base64 images instead, and the text routes
answer 400.

Errors are OpenAI-style JSON, `{"error": {"message", "type", "code"}}`, with a 4xx status that says
whose fault it is. Requests from all clients are batched by the `Engine` (see engine.py).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import PromptTuneError
from .engine import Engine


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, logit_bias...)


class CompletionBody(_Body):
    model: str
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    seed: int | None = None
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
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    seed: int | None = None
    stop: str | list[str] | None = None


class ClassifyBody(_Body):
    model: str
    input: str | list[str | dict[str, str]] = Field(min_length=1)


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error"):
        self.status, self.message, self.code, self.kind = status, message, code, kind


def create_app(engine: Engine, api_key: str | None = None, max_body_bytes: int = 1_000_000,
               max_tokens_limit: int = 512, max_inputs: int = 256):
    """The FastAPI app over `engine`. `api_key`: require `Authorization: Bearer <key>` (not on /health)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import iterate_in_threadpool

    app = FastAPI(title="prompttune serve", version="1")
    app.state.engine = engine

    def error(status: int, message: str, code: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "code": code, "param": None}}, status)

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

    @app.exception_handler(PromptTuneError)
    async def _user_error(_: Request, exc: PromptTuneError):
        return error(400, str(exc), "invalid_input")

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                             "invalid_api_key", "authentication_error")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            return error(413, f"request body is {int(length):,} bytes; the limit is {max_body_bytes:,}",
                         "body_too_large")
        if request.method == "POST" and length is None:
            body = b""
            async for part in request.stream():
                body += part
                if len(body) > max_body_bytes:
                    return error(413, f"request body exceeds the limit of {max_body_bytes:,} bytes", "body_too_large")
            request._body = body  # starlette re-reads the cached body
        return await call_next(request)

    def served(name: str):
        try:
            return engine.get(name)
        except KeyError:
            raise APIError(404, f"model '{name}' is not served here (available: {', '.join(engine.prompts)})",
                           "model_not_found") from None

    def token_limit(value: int | None, default: int) -> int:
        value = default if value is None else value
        if value > max_tokens_limit:
            raise APIError(400, f"max_tokens {value} is over this server's limit of {max_tokens_limit}",
                           "max_tokens_too_large")
        return value

    async def run(future) -> Any:
        return await asyncio.wrap_future(future)

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": len(engine.prompts), **engine.stats}

    @app.get("/v1/models")
    async def models():
        now = int(time.time())
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": now, "owned_by": "prompttune", **p.describe()}
            for name, p in engine.prompts.items()
        ]}

    if getattr(engine, "kind", "text") == "clip":  # a CLIP backbone: images in, labels out, no text generation
        _add_image_routes(app, engine, served, run, max_inputs)
        return app

    @app.post("/v1/classify")
    async def classify(body: ClassifyBody):
        prompt = served(body.model)
        if prompt.predictor is None:
            raise APIError(400, f"'{body.model}' is the bare backbone; classify needs an artifact (it has the "
                           "template and labels)", "not_a_classifier")
        inputs = [body.input] if isinstance(body.input, str) else body.input
        if len(inputs) > max_inputs:
            raise APIError(400, f"{len(inputs)} inputs; the limit is {max_inputs} per request", "too_many_inputs")
        for item in inputs:
            prompt.predictor.render(item)  # a missing field is the client's error, found before queueing
        results = await run(engine.classify(body.model, inputs))
        return {"object": "list", "model": body.model, "data": [
            {"index": i, "label": label, "scores": scores} for i, (label, scores) in enumerate(results)
        ]}

    async def complete(name: str, texts: list[str], render: bool, max_tokens: int, temperature: float, n: int,
                       seed: int | None, stop) -> list[tuple]:
        prompt = served(name)
        if render and prompt.predictor is not None:
            texts = [prompt.predictor.render(t) for t in texts]
        rows = [t for t in texts for _ in range(n)]
        out = await run(engine.generate(name, rows, max_tokens, temperature, seed))
        return [_apply_stop(o, stop) for o in out]

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or len(prompts) > max_inputs:
            raise APIError(400, f"prompt: give 1 to {max_inputs} prompts", "invalid_prompt")
        max_tokens = token_limit(body.max_tokens, 16)
        prompt = served(body.model)
        render = not body.raw and prompt.predictor is not None
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:
            if len(prompts) != 1 or body.n != 1:
                raise APIError(400, "stream: one prompt and n=1 per streamed request", "invalid_stream")
            text = prompt.predictor.render(prompts[0]) if render else prompts[0]
            chunks = iterate_in_threadpool(engine.stream(body.model, text, max_tokens, body.temperature))

            def piece(delta: str, finish):
                return {"id": cid, "object": "text_completion", "created": created, "model": body.model,
                        "choices": [{"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}]}

            return StreamingResponse(_sse(chunks, piece), media_type="text/event-stream")
        out = await complete(body.model, prompts, render, max_tokens, body.temperature, body.n, body.seed, body.stop)
        return {
            "id": cid, "object": "text_completion", "created": created, "model": body.model,
            "choices": [{"index": i, "text": t, "logprobs": None, "finish_reason": f} for i, (t, _, _, f) in
                        enumerate(out)],
            "usage": _usage(out),
        }

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody):
        prompt = served(body.model)
        max_tokens = token_limit(body.max_completion_tokens or body.max_tokens, 128)
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
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:
            if body.n != 1:
                raise APIError(400, "stream: n=1 per streamed request", "invalid_stream")
            final = prompt.predictor.render(text) if render else text
            chunks = iterate_in_threadpool(engine.stream(body.model, final, max_tokens, body.temperature))

            def piece(delta: str, finish):
                d = {"role": "assistant", "content": delta} if finish is None else {}
                return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                        "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}

            return StreamingResponse(_sse(chunks, piece), media_type="text/event-stream")
        out = await complete(body.model, [text], render, max_tokens, body.temperature, body.n, body.seed, body.stop)
        return {
            "id": cid, "object": "chat.completion", "created": created, "model": body.model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
                        for i, (t, _, _, f) in enumerate(out)],
            "usage": _usage(out),
        }

    return app


def _add_image_routes(app, engine, served, run, max_inputs: int) -> None:
    """`/v1/classify` for a `ClipEngine` (see serve/clip.py); the text-generation routes say why they are absent."""
    from starlette.concurrency import run_in_threadpool

    from .clip import decode_request_image

    @app.post("/v1/classify")
    async def classify_images(body: ClassifyBody):
        served(body.model)
        inputs = [body.input] if isinstance(body.input, str) else body.input
        if len(inputs) > max_inputs:
            raise APIError(400, f"{len(inputs)} inputs; the limit is {max_inputs} per request", "too_many_inputs")
        images = await run_in_threadpool(lambda: [decode_request_image(x, f"input[{i}]") for i, x in enumerate(inputs)])
        results = await run(engine.classify(body.model, images))
        return {"object": "list", "model": body.model, "data": [
            {"index": i, "label": label, "scores": scores} for i, (label, scores) in enumerate(results)
        ]}

    async def no_text():
        raise APIError(400, f"this server runs the CLIP model {engine.backbone.model_id}: it classifies images "
                       "(POST /v1/classify) and does not generate text", "not_a_text_model")

    app.post("/v1/completions")(no_text)
    app.post("/v1/chat/completions")(no_text)


def _apply_stop(out: tuple, stop) -> tuple:
    text, n_prompt, n_completion, finish = out
    for s in [stop] if isinstance(stop, str) else (stop or []):
        if s and s in text:
            text, finish = text[: text.index(s)], "stop"
    return text, n_prompt, n_completion, finish


def _usage(out: list[tuple]) -> dict[str, int]:
    prompt = sum({id(o): o[1] for o in out}.values())
    completion = sum(o[2] for o in out)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _sse(chunks, piece):
    async for delta in chunks:
        if delta:
            yield f"data: {json.dumps(piece(delta, None))}\n\n"
    yield f"data: {json.dumps(piece('', 'stop'))}\n\n"
    yield "data: [DONE]\n\n"
