"""Waiting on a decode from the event loop: server-sent events, and cancel on disconnect.

A streamed request is queued like any other, so it still joins a batch. Its events follow
OpenAI's ``chat.completion.chunk`` format: a first chunk with the role, content deltas, a
chunk with ``finish_reason``, the usage chunk when ``stream_options.include_usage`` asks for
it, then ``data: [DONE]``. Content deltas are sent as the engine decodes them when it streams
text (``GenRequest.on_text``); otherwise the text is one delta when the decode ends. With
tools (and ``tool_choice`` not ``none``) the text is read for tool calls as it comes
(``chat_format.CallStream``): each call is sent as OpenAI sends it once its block closes, and
the last chunk's ``finish_reason`` is ``tool_calls``.

When the client goes away (its socket closes), the request's future is cancelled: a request
still queued never decodes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import Future
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from distill_server.errors import ApiError
from distill_server.services.chat import STOPPING, Chat, Prepared, usage
from distill_server.store import new_id
from distill_server.weights.chat_format import CallStream

if TYPE_CHECKING:
    from distill_server.engine.decode import GenResult


class ClientGone(ApiError):
    """The client closed its connection before its answer was ready (nobody reads this)."""

    def __init__(self) -> None:
        super().__init__(499, "The client closed the connection.", code="client_closed")


async def decoded(future: Future[GenResult]) -> GenResult:
    """The result of ``future``; cancelling this coroutine cancels the request."""
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        if future.cancelled() and not _current_task_cancelling():
            # Cancelled by the batcher closing, not by our client: the server is stopping.
            raise ApiError(503, STOPPING, type="server_error") from None
        raise


async def wait_unless_gone(request: Request, chat: Chat, prepared: Prepared) -> GenResult:
    """Decode ``prepared``; if the client disconnects first, withdraw it and raise."""
    future = chat.submit(prepared)
    waiter = asyncio.ensure_future(decoded(future))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not waiter.done():
        waiter.cancel()
        future.cancel()
        raise ClientGone
    return waiter.result()


class Deltas:
    """Pieces of an answer handed over from the decoding thread to the event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    def __call__(self, piece: str) -> None:  # on the decoding thread
        self._loop.call_soon_threadsafe(self.queue.put_nowait, piece)


async def event_stream(
    chat: Chat, prepared: Prepared, deltas: Deltas, *, include_usage: bool
) -> AsyncIterator[str]:
    """The SSE lines of one streamed completion. Starlette cancels this generator when the
    client disconnects; the ``finally`` then withdraws the request."""
    future = chat.submit(prepared)
    waiter = asyncio.ensure_future(decoded(future))
    chunk = _Chunks(prepared.model)
    calls = prepared.call_stream() if prepared.reads_calls else None
    try:
        yield chunk.event({"role": "assistant", "content": "", "refusal": None})
        async with aclosing(_pieces(deltas.queue, waiter)) as pieces:
            async for piece in pieces:
                for event in _read(calls, piece):
                    yield chunk.event(event)
        try:
            result = waiter.result()
        except ApiError as error:
            yield _sse(error.body())
            return
        if not prepared.streamed and result.text:
            for event in _read(calls, result.text):
                yield chunk.event(event)
        for event in _read(calls, None):
            yield chunk.event(event)
        finish = "tool_calls" if calls is not None and calls.calls else result.finish_reason
        yield chunk.event({}, finish_reason=finish)
        if include_usage:
            yield _sse({**chunk.base(), "choices": [], "usage": usage(result)})
        yield "data: [DONE]\n\n"
    finally:
        waiter.cancel()
        future.cancel()


def _read(calls: CallStream | None, piece: str | None) -> list[dict[str, Any]]:
    """The deltas that send ``piece`` (None: the decode is over). Read for tool calls, text
    that may start a call waits, and each call goes out once its block closes: a delta with
    its index, id, type, name and empty arguments, then one with its arguments."""
    if calls is None:
        return [{"content": piece}] if piece else []
    deltas: list[dict[str, Any]] = []
    for event in calls.feed(piece) if piece is not None else calls.close():
        if isinstance(event, str):
            deltas.append({"content": event})
            continue
        index = calls.calls.index(event)
        function = {"name": event.name, "arguments": ""}
        first = {"index": index, "id": event.id, "type": "function", "function": function}
        deltas.append({"tool_calls": [first]})
        arguments = {"index": index, "function": {"arguments": event.arguments}}
        deltas.append({"tool_calls": [arguments]})
    return deltas


async def _pieces(
    queue: asyncio.Queue[str], waiter: asyncio.Future[Any]
) -> AsyncGenerator[str, None]:
    """Each piece as it arrives, until the decode is over (and every piece handed on).

    Closed early (the client left), the pending ``queue.get`` is cancelled: left pending, it
    was destroyed with the queue, and asyncio logged "Task was destroyed but it is pending!".
    """
    while not waiter.done():
        getter = asyncio.ensure_future(queue.get())
        try:
            await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                # Only asked to cancel: the task is neither cancelled nor done until it runs,
                # and a piece it was handed stays in the queue for the loop below.
                getter.cancel()
        if getter.done() and not getter.cancelled():
            yield getter.result()
    # Pieces are queued before the result is set, on the same loop: none is left behind.
    while not queue.empty():
        yield queue.get_nowait()


class _Chunks:
    def __init__(self, model: str) -> None:
        self._id = new_id("chatcmpl-")
        self._created = int(time.time())
        self._model = model

    def base(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "service_tier": "default",
            "system_fingerprint": "fp_local",
        }

    def event(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**self.base(), "choices": [choice], "usage": None})


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"


async def _disconnected(request: Request) -> None:
    # Once the body is read, the server's next message is the disconnect (or the response
    # having been sent, which does not happen while we wait).
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
