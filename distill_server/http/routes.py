"""The HTTP surface on Starlette: every endpoint, its body checks, and its error answers.

Handlers are coroutines on the server's event loop; the components (SQLite store, files on
disk) are blocking, so they run in Starlette's thread pool, and a chat waits on the batcher's
future without holding a thread. Every answer that is not a success, from a route or from
Starlette itself (404, 405, a malformed form), is OpenAI's ``{"error": {...}}`` JSON.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from distill_server.errors import ApiError, bad_request, whole_number
from distill_server.http.app import App
from distill_server.http.guard import error_response
from distill_server.http.streaming import Deltas, event_stream, wait_unless_gone
from distill_server.services.schemas import (
    BatchCreate,
    ChatRequest,
    JobRequest,
    UpdateCompletion,
    parse,
)

log = logging.getLogger("distill_server")
Body = TypeVar("Body", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Any]]
_FORM_FIELD_LIMIT = 1024 * 1024


def endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """``handler``'s result as JSON; its ApiError, or a crash, as an OpenAI error body."""

    async def run(request: Request) -> Response:
        try:
            result = await handler(request)
        except ApiError as error:
            return error_response(error)
        except HTTPException as exc:  # Starlette's own refusals (a body it cannot parse)
            status = exc.status_code if 400 <= exc.status_code < 500 else 400
            return error_response(ApiError(status, f"{exc.detail}", code="invalid_request"))
        except Exception as exc:  # a server bug must still answer in OpenAI's shape
            log.exception("internal error on %s %s", request.method, request.url.path)
            message = f"Internal error: {type(exc).__name__}: {exc}"
            return error_response(ApiError(500, message, type="server_error"))
        return result if isinstance(result, Response) else JSONResponse(result)

    return run


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def unsupported(media: str, wanted: str) -> ApiError:
    return ApiError(
        415,
        f"Content-Type {media or 'none'!r} is not accepted here; send {wanted}.",
        code="unsupported_media_type",
    )


async def json_body(request: Request, model: type[Body]) -> Body:
    """The body as ``model``: only ``application/json`` is read, and it is checked in full."""
    if media_type(request) != "application/json":
        raise unsupported(media_type(request), "the body as JSON, Content-Type: application/json")
    raw = await request.body()
    return await run_in_threadpool(parse, model, raw)


def no_body(request: Request) -> None:
    """Body-less POSTs (cancel) take no form a web page could send without asking first."""
    if media_type(request) not in ("", "application/json"):
        raise unsupported(media_type(request), "no body, or a JSON one")


def int_query(request: Request, key: str, default: int) -> int:
    value = request.query_params.get(key)
    return default if value is None else whole_number(value, key, 1, 10_000)


def order_query(request: Request, default: str) -> str:
    order = request.query_params.get("order", default)
    if order not in ("asc", "desc"):
        raise bad_request(f"`order` must be 'asc' or 'desc', not {order!r}.", "order")
    return order


def metadata_query(request: Request) -> dict[str, str]:
    """``metadata[key]=value`` query pairs, as the OpenAI SDK encodes a metadata filter."""
    found = (re.fullmatch(r"metadata\[(.+)\]", key) for key in request.query_params)
    return {m.group(1): request.query_params[m.group(0)] for m in found if m}


class Routes:
    """The endpoints of one ``App``."""

    def __init__(self, app: App) -> None:
        self.app = app

    def table(self) -> list[Route]:
        job = "/v1/fine_tuning/jobs/{job_id}"
        cid = "/v1/chat/completions/{cid}"
        table: list[tuple[str, str, Handler]] = [
            ("/v1/chat/completions", "POST", self.create_completion),
            ("/v1/chat/completions", "GET", self.list_completions),
            (cid, "GET", self._call(lambda a, p: a.chat.retrieve(p["cid"]))),
            (cid, "POST", self.update_completion),
            (cid, "DELETE", self._call(lambda a, p: a.chat.delete(p["cid"]))),
            (cid + "/messages", "GET", self.completion_messages),
            ("/v1/files", "POST", self.upload),
            ("/v1/files", "GET", self.list_files),
            ("/v1/files/{file_id}", "GET", self._call(lambda a, p: a.files.retrieve(p["file_id"]))),
            (
                "/v1/files/{file_id}",
                "DELETE",
                self._call(lambda a, p: a.files.delete(p["file_id"])),
            ),
            ("/v1/files/{file_id}/content", "GET", self.file_content),
            ("/v1/fine_tuning/jobs", "POST", self.create_job),
            ("/v1/fine_tuning/jobs", "GET", self.list_jobs),
            (job, "GET", self._call(lambda a, p: a.jobs.retrieve(p["job_id"]))),
            (job + "/cancel", "POST", self.cancel_job),
            (job + "/events", "GET", self.job_events),
            (job + "/checkpoints", "GET", self.job_checkpoints),
            ("/v1/batches", "POST", self.create_batch),
            ("/v1/batches", "GET", self.list_batches),
            (
                "/v1/batches/{batch_id}",
                "GET",
                self._call(lambda a, p: a.batches.retrieve(p["batch_id"])),
            ),
            ("/v1/batches/{batch_id}/cancel", "POST", self.cancel_batch),
            (
                "/v1/models",
                "GET",
                self._call(lambda a, p: {"object": "list", "data": a.registry.bodies()}),
            ),
            (
                "/v1/models/{model:path}",
                "GET",
                self._call(lambda a, p: a.registry.retrieve(p["model"])),
            ),
            (
                "/v1/models/{model:path}",
                "DELETE",
                self._call(lambda a, p: a.registry.delete(p["model"])),
            ),
        ]
        paths: dict[str, dict[str, Handler]] = {}
        for path, method, handler in table:
            paths.setdefault(path, {})[method] = handler
        return [
            Route(path, _by_method(handlers), methods=list(handlers))
            for path, handlers in paths.items()
        ]

    def _call(self, fn: Callable[[App, dict[str, str]], Any]) -> Handler:
        async def handler(request: Request) -> Any:
            return await run_in_threadpool(fn, self.app, dict(request.path_params))

        return handler

    async def create_completion(self, request: Request) -> Response:
        body = await json_body(request, ChatRequest)
        chat = self.app.chat
        deltas = Deltas() if body.stream else None
        prepared = await run_in_threadpool(chat.prepare, body, deltas)
        if deltas is not None:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            chunks = event_stream(chat, prepared, deltas, include_usage=usage)
            return StreamingResponse(chunks, media_type="text/event-stream", headers=_NO_CACHE)
        result = await wait_unless_gone(request, chat, prepared)
        answer = await run_in_threadpool(chat.completion, prepared, result)
        # Lets clients and tests see that concurrent requests were decoded together.
        # openai-processing-ms, as OpenAI sends it: the time spent on the request once taken
        # off the queue, so a client can tell the model's time from the queue's.
        headers = {
            "x-distill-batch-size": str(result.batch_size),
            "openai-processing-ms": str(round(result.decode_s * 1000)),
        }
        return JSONResponse(answer, headers=headers)

    async def update_completion(self, request: Request) -> Any:
        body = await json_body(request, UpdateCompletion)
        cid = request.path_params["cid"]
        return await run_in_threadpool(self.app.chat.update, cid, body.metadata)

    async def list_completions(self, request: Request) -> Any:
        q = request.query_params
        args = (q.get("model"), metadata_query(request), q.get("after"))
        limit, order = int_query(request, "limit", 20), order_query(request, "asc")
        return await run_in_threadpool(self.app.chat.list, *args, limit, order)

    async def completion_messages(self, request: Request) -> Any:
        limit, order = int_query(request, "limit", 20), order_query(request, "asc")
        args = (request.path_params["cid"], request.query_params.get("after"), limit, order)
        return await run_in_threadpool(self.app.chat.messages, *args)

    async def upload(self, request: Request) -> Any:
        if media_type(request) != "multipart/form-data":
            raise unsupported(media_type(request), "the file as multipart/form-data")
        limits = {"max_files": 1, "max_fields": 16, "max_part_size": _FORM_FIELD_LIMIT}
        try:
            form = await request.form(**limits)
        except HTTPException as exc:  # Starlette could not parse it as multipart
            raise bad_request(
                f"The multipart body could not be read ({exc.detail.rstrip('.')}); send one "
                "`file` part and a `purpose` field, as multipart/form-data with its boundary.",
                "file",
            ) from None
        try:
            upload, purpose = form.get("file"), form.get("purpose")
            if not isinstance(upload, UploadFile) or not isinstance(purpose, str):
                raise bad_request("A multipart upload needs a `file` part and a `purpose`.", "file")
            name = upload.filename or "upload.jsonl"
            return await run_in_threadpool(self.app.files.create, name, purpose, upload.file)
        finally:
            await form.close()  # the spooled temporary file of the part

    async def list_files(self, request: Request) -> Any:
        limit, order = int_query(request, "limit", 10000), order_query(request, "desc")
        q = request.query_params
        return await run_in_threadpool(
            self.app.files.list, q.get("purpose"), q.get("after"), limit, order
        )

    async def file_content(self, request: Request) -> Response:
        path = await run_in_threadpool(self.app.files.path, request.path_params["file_id"])
        from starlette.responses import FileResponse

        return FileResponse(path, media_type="application/octet-stream")

    async def create_job(self, request: Request) -> Any:
        body = await json_body(request, JobRequest)
        return await run_in_threadpool(self.app.jobs.create, body.model_dump(exclude_none=True))

    async def cancel_job(self, request: Request) -> Any:
        no_body(request)
        return await run_in_threadpool(self.app.jobs.cancel, request.path_params["job_id"])

    async def list_jobs(self, request: Request) -> Any:
        args = (
            request.query_params.get("after"),
            int_query(request, "limit", 20),
            metadata_query(request),
        )
        return await run_in_threadpool(self.app.jobs.list, *args)

    async def job_events(self, request: Request) -> Any:
        args = (
            request.path_params["job_id"],
            request.query_params.get("after"),
            int_query(request, "limit", 20),
        )
        return await run_in_threadpool(self.app.jobs.events, *args)

    async def job_checkpoints(self, request: Request) -> Any:
        args = (
            request.path_params["job_id"],
            request.query_params.get("after"),
            int_query(request, "limit", 10),
        )
        return await run_in_threadpool(self.app.jobs.checkpoints, *args)

    async def create_batch(self, request: Request) -> Any:
        body = await json_body(request, BatchCreate)
        return await run_in_threadpool(self.app.batches.create, body)

    async def cancel_batch(self, request: Request) -> Any:
        no_body(request)
        return await run_in_threadpool(self.app.batches.cancel, request.path_params["batch_id"])

    async def list_batches(self, request: Request) -> Any:
        after, limit = request.query_params.get("after"), int_query(request, "limit", 20)
        return await run_in_threadpool(self.app.batches.list, after, limit)


_NO_CACHE = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _by_method(handlers: dict[str, Handler]) -> Callable[[Request], Awaitable[Response]]:
    wrapped = {method: endpoint(handler) for method, handler in handlers.items()}

    async def dispatch(request: Request) -> Response:
        # Starlette answers HEAD on every GET route; it is the GET without its body.
        return await (wrapped.get(request.method) or wrapped["GET"])(request)

    return dispatch


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path = request.url.path
    codes = {404: "unknown_url", 405: "method_not_allowed"}
    messages = {
        404: f"Unknown path {path!r}: this server implements /v1/chat/completions, /v1/files, "
        "/v1/fine_tuning/jobs, /v1/batches and /v1/models.",
        405: f"{request.method} is not allowed on {path!r}.",
    }
    message = messages.get(exc.status_code, str(exc.detail))
    error = ApiError(exc.status_code, message, code=codes.get(exc.status_code))
    headers = dict(exc.headers or {})
    return error_response(error, headers)


async def _crash(request: Request, exc: Exception) -> Response:
    # Starlette's last resort (a bug outside any endpoint) still answers in OpenAI's shape; an
    # ApiError raised where no route catches it (a dashboard form's body timed out) keeps its own.
    if isinstance(exc, ApiError):
        return error_response(exc)
    message = f"Internal error: {type(exc).__name__}: {exc}"
    return error_response(ApiError(500, message, type="server_error"))


def asgi_app(app: App) -> Starlette:
    """The Starlette application serving ``app``'s endpoints under ``/v1``."""
    handlers = {HTTPException: _http_error, Exception: _crash}
    starlette = Starlette(routes=Routes(app).table(), exception_handlers=handlers)
    starlette.router.redirect_slashes = False
    return starlette
