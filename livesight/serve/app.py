"""The HTTP API's routes (FastAPI) over the server's streams (streams.py).

Every error is JSON, {"error": {"field": ..., "message": ...}}, with a 4xx status naming the field
at fault; a failure inside one stream reaches only that stream's events. With a token, every route
but /healthz needs `Authorization: Bearer TOKEN`.
"""

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import Callable

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from livesight.app import transcript
from livesight.errors import InputError
from livesight.serve.bodies import ChatRequest, Question, StreamCreate
from livesight.serve.metrics import ApiMetrics
from livesight.serve.streams import ApiStreams, FieldError
from livesight.streaming.events import Event

MAX_BODY_BYTES = 64 * 1024
HEARTBEAT_S = 15.0  # an idle event stream sends a comment this often, so proxies keep it open
ANSWER_TIMEOUT_S = 300.0
MODEL_PREFIX = "livesight/"


def error(status: int, field: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "message": message}}, status_code=status, headers=headers)


class BodyLimit:
    """A request body past `limit` bytes gets 413 before the route reads it (declared or streamed)."""

    class TooLarge(Exception):
        pass

    def __init__(self, app, limit: int, exempt: str | None = None):
        """exempt: a path prefix whose requests are not limited here (the web UI's uploads have their own)."""
        self.app, self.limit, self.exempt = app, limit, exempt

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (self.exempt and scope["path"].startswith(self.exempt)):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._refuse(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise self.TooLarge
            return message
        try:
            await self.app(scope, limited, send)
        except self.TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        response = error(413, "body", f"request body over {self.limit:,} bytes")
        await response(scope, receive, send)


def build_app(streams: ApiStreams, metrics: ApiMetrics, token: str | None, ready: Callable[[], bool]) -> FastAPI:
    app = FastAPI(title="LiveSight", version="1", docs_url="/docs", redoc_url=None)

    def authorized(authorization: str | None = Header(None)) -> None:
        if token is None:
            return
        given = authorization[7:] if authorization and authorization[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise FieldError("authorization", "missing or wrong token: send Authorization: Bearer TOKEN", 401)
    auth = [Depends(authorized)]

    @app.exception_handler(FieldError)
    async def field_error(request: Request, err: FieldError):
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return error(err.status, err.field, str(err), headers)

    @app.exception_handler(InputError)
    async def input_error(request: Request, err: InputError):
        return error(400, "body", str(err))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {"loc": ("body",), "msg": "invalid request"}
        loc = [str(part) for part in first.get("loc", ("body",))]
        name = ".".join(loc[1:]) if len(loc) > 1 and loc[0] in ("body", "query", "header") else ".".join(loc)
        if first.get("type") == "json_invalid" or not name:
            name = "body"
        return error(422, name, f"{name}: {first.get('msg', 'invalid')}")

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", dependencies=auth)
    def readyz():
        if not ready():
            return error(503, "engine", "the engine is not stepping")
        return {"status": "ready", "streams": len(streams.all()), "capacity": streams.capacity}

    @app.get("/metrics", dependencies=auth)
    def prometheus():
        return Response(metrics.render([s.state for s in streams.all()]), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/replicas", dependencies=auth)
    def replicas():
        return {"replicas": streams.list_replicas()}

    @app.post("/v1/replicas", status_code=201, dependencies=auth)
    def add_replica():
        return streams.add_replica()

    @app.post("/v1/streams", status_code=201, dependencies=auth)
    def create(body: StreamCreate):
        return streams.create(body).describe()

    @app.get("/v1/streams", dependencies=auth)
    def listed():
        return {"streams": [s.describe() for s in streams.all()]}

    @app.get("/v1/streams/{stream_id}", dependencies=auth)
    def one(stream_id: str):
        return streams.get(stream_id).describe()

    @app.delete("/v1/streams/{stream_id}", status_code=204, dependencies=auth)
    def delete(stream_id: str):
        streams.delete(stream_id)
        return Response(status_code=204)

    @app.get("/v1/streams/{stream_id}/events", dependencies=auth)
    async def events(stream_id: str, request: Request, last_event_id: str | None = Header(None)):
        stream = streams.get(stream_id)
        last = _last_id(last_event_id, stream.log.last_id)
        return StreamingResponse(_sse(stream.log, last, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/streams/{stream_id}/questions", dependencies=auth)
    def ask(stream_id: str, body: Question, stream: bool = False):
        asked = streams.get(stream_id)
        if stream:
            _check_question(asked, body.text)

            async def events():
                async for kind, value in _answer_parts(asked, body.text, body.max_tokens):
                    data = {"text": value} if kind == "delta" else _answered(body.text, value) \
                        if kind == "answer" else {"message": value}
                    yield f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
            return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return _answered(body.text, _answer(asked, body.text, body.max_tokens))

    @app.get("/v1/streams/{stream_id}/transcript", dependencies=auth)
    def transcript_of(stream_id: str, format: str = Query("jsonl", pattern="^(jsonl|srt|vtt)$")):
        stream = streams.get(stream_id)
        lines = stream.transcript()
        chunk_s = stream.caption_s
        body, kind = {"jsonl": (transcript.to_jsonl(lines), "application/x-ndjson"),
                      "srt": (transcript.to_srt(lines, chunk_s), "application/x-subrip"),
                      "vtt": (transcript.to_vtt(lines, chunk_s), "text/vtt")}[format]
        return PlainTextResponse(body, media_type=kind)

    @app.post("/v1/chat/completions", dependencies=auth)
    def chat(body: ChatRequest):
        stream_id = body.stream_id or (body.model[len(MODEL_PREFIX):] if body.model.startswith(MODEL_PREFIX) else "")
        if not stream_id:
            raise FieldError("model", f"name the stream: model \"{MODEL_PREFIX}ID\" or the field stream_id")
        stream = streams.get(stream_id)
        users = [m for m in body.messages if m.role == "user"]
        if not users or not users[-1].text().strip():
            raise FieldError("messages", "no user message with text: the last user message is the question")
        question, limit = users[-1].text(), body.max_completion_tokens or body.max_tokens
        if body.stream:
            _check_question(stream, question)
            return _completion_chunks(body, _answer_parts(stream, question, limit))
        return _completion(body, _answer(stream, question, limit))

    return app


def _last_id(header: str | None, newest: int) -> int:
    if header is None or not header.strip():
        return 0
    if not header.strip().isdigit() or int(header) > newest:
        raise FieldError("last-event-id", f"Last-Event-ID {header[:20]!r}: expected an event id this stream sent "
                                          f"(0 to {newest})")
    return int(header)


async def _sse(log, last: int, request: Request):
    """The log's events after `last` as Server-Sent Events, then each new one, until the stream is
    deleted or the client leaves; a comment every HEARTBEAT_S while nothing comes."""
    while True:
        batch, lost, closed = await log.wait_after(last, HEARTBEAT_S)
        if lost:
            yield f"event: lost\ndata: {json.dumps({'events': lost, 'after_id': last})}\n\n"
        for number, event in batch:
            yield f"id: {number}\nevent: {event.type}\ndata: {json.dumps(event.to_dict(), ensure_ascii=False)}\n\n"
            last = number
        if closed and not batch:
            return
        if not batch:
            yield ": keep-alive\n\n"  # a client gone is noticed here: its write fails, the response ends


def _answered(question: str, answer: Event) -> dict:
    return {"question": question.strip(), "answer": answer.text, "t": answer.t, **answer.data}


def _check_question(stream, text: str) -> None:
    """FieldError (400, "text") for an empty or too long question, before it is queued."""
    try:
        stream.check_question(text)
    except InputError as err:
        raise FieldError("text", str(err)) from None


def _answer(stream, text: str, max_tokens: int | None, on_delta=None) -> Event:
    """Ask and wait: the answer event, or a FieldError naming the question (a 4xx) or saying the stream
    cannot answer (409). on_delta: told the answer's text as it is generated."""
    _check_question(stream, text)
    events = stream.ask(text, ANSWER_TIMEOUT_S, max_tokens, on_delta)
    answer = next((e for e in events if e.type == "answer"), None)
    if answer is None:
        message = events[0].text if events else "no answer"
        raise FieldError("stream_id", f"stream {stream.id}: {message}", 409)
    return answer


async def _answer_parts(stream, text: str, max_tokens: int | None):
    """("delta", text) as the answer is generated, then ("answer", its event) or ("error", message). The
    deltas come from the engine's thread onto this loop; the wait for the answer holds one worker thread."""
    loop = asyncio.get_running_loop()
    parts: asyncio.Queue[str] = asyncio.Queue()
    waiting = loop.run_in_executor(None, _answer, stream, text, max_tokens,
                                   lambda part: loop.call_soon_threadsafe(parts.put_nowait, part))
    while True:
        getting = asyncio.ensure_future(parts.get())
        await asyncio.wait({getting, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if getting.done():
            yield "delta", getting.result()
            continue
        getting.cancel()
        await asyncio.sleep(0)  # the deltas the engine sent before the answer are queued by now
        while not parts.empty():
            yield "delta", parts.get_nowait()
        break
    try:
        yield "answer", waiting.result()
    except FieldError as err:
        yield "error", str(err)


def _completion(body: ChatRequest, answer: Event) -> dict:
    """OpenAI's chat.completion for an answer, with LiveSight's figures under "livesight"."""
    limit = body.max_completion_tokens or body.max_tokens
    tokens = answer.data.get("tokens", 0)
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.model, "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                                              "finish_reason": "length" if limit and tokens >= limit else "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens},
            "livesight": {k: answer.data.get(k) for k in ("ttft_ms", "latency_ms", "retrieved")}}


def _completion_chunks(body: ChatRequest, parts):
    """OpenAI's chat.completion.chunk stream: the answer's text as it is generated, then the finish."""
    created, cid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}"
    limit = body.max_completion_tokens or body.max_tokens

    def chunk(delta: dict, reason: str | None) -> str:
        return "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                      "model": body.model, "choices": [{"index": 0, "delta": delta,
                                                                        "finish_reason": reason}]}) + "\n\n"

    async def chunks():
        yield chunk({"role": "assistant", "content": ""}, None)
        async for kind, value in parts:
            if kind == "delta":
                yield chunk({"content": value}, None)
            elif kind == "answer":
                tokens = value.data.get("tokens", 0)
                yield chunk({}, "length" if limit is not None and tokens >= limit else "stop")
            else:
                yield "data: " + json.dumps({"error": {"field": "stream_id", "message": value}}) + "\n\n"
        yield "data: [DONE]\n\n"
    return StreamingResponse(chunks(), media_type="text/event-stream")
