"""The dashboard's pages, served by ``distill-server`` at ``/`` beside the API under ``/v1``.

Pages are rendered on the server from Jinja2 templates shipped in the package; the only script
is a few lines that tick every checkbox of a page. Components are called directly (the same
``App`` the API uses), in Starlette's thread pool because they block.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
import shlex
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from distill_server.dashboard import distill, queries
from distill_server.dashboard.charts import loss_chart, method_chart
from distill_server.dashboard.sessions import COOKIE, Session, Sessions
from distill_server.errors import MAX_CURSOR, ApiError, whole_number
from distill_server.http.app import App
from distill_server.http.keys import KeyCheck, Verdict, locked_message
from distill_server.private import private_dir

Page = Callable[[Request, Session | None], Awaitable[Response]]
FINAL = ("succeeded", "failed", "cancelled")
_REPORT_NAME = re.compile(r"[\w.-]{1,120}\.html")
_PLAYGROUND_TOKENS = 128
_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
# A report is a page of its own: its scripts run, sandboxed, with nothing fetched from anywhere.
_REPORT_POLICY = (
    "sandbox allow-scripts; default-src 'none'; img-src data:; "
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'"
)


def content_policy() -> str:
    """The pages' ``Content-Security-Policy``: everything from this server only, and of
    inline script just the templates' own (by hash: a page that echoes input runs none)."""
    folder = Path(__file__).parent / "templates"
    scripts = sorted(
        {
            "'sha256-" + base64.b64encode(hashlib.sha256(code.encode()).digest()).decode() + "'"
            for template in folder.glob("*.j2")
            for code in _SCRIPT.findall(template.read_text(encoding="utf-8"))
        }
    )
    return (
        f"default-src 'self'; script-src 'self' {' '.join(scripts)}; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


class Dashboard:
    def __init__(self, app: App, data_dir: Path, keys: KeyCheck) -> None:
        self.app = app
        self.data_dir = data_dir
        self.reports = data_dir / "reports"
        self.sessions = Sessions(keys)
        self.env = Environment(
            loader=PackageLoader("distill_server.dashboard", "templates"),
            autoescape=select_autoescape(default=True),
        )
        self.env.filters["when"] = _when
        self.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False)

    def routes(self) -> list[BaseRoute]:
        get, post = ["GET"], ["POST"]
        return [
            Route("/", self._home, methods=get),
            Route("/login", self._login, methods=["GET", "POST"]),
            Route("/completions", self._page(self.completions, shows_form=True), methods=get),
            Route("/completions/{cid}", self._page(self.completion), methods=get),
            Route("/distill", self._page(self.distill, post=True), methods=post),
            Route("/jobs", self._page(self.jobs), methods=get),
            Route("/jobs/{job_id}", self._page(self.job, shows_form=True), methods=get),
            Route("/jobs/{job_id}/cancel", self._page(self.cancel, post=True), methods=post),
            Route("/models", self._page(self.models), methods=get),
            Route("/playground", self._page(self.playground, shows_form=True), methods=get),
            Route("/playground", self._page(self.playground, post=True), methods=post),
            Route("/reports", self._page(self.report_list, shows_form=True), methods=get),
            Route("/reports", self._page(self.upload_report, post=True), methods=post),
            Route("/reports/{name}", self._page(self.report), methods=get),
        ]

    # --- sessions ---------------------------------------------------------------------------

    async def _home(self, request: Request) -> Response:
        return RedirectResponse("/completions", 303)

    async def _login(self, request: Request) -> Response:
        error, status, headers = None, 200, {}
        target = request.query_params.get("next", "/completions")
        if request.method == "POST":
            form = await request.form()
            target = str(form.get("next", "/completions"))
            client = request.client.host if request.client else ""
            verdict = self.sessions.keys.check(client, str(form.get("key", "")))
            if verdict is Verdict.RIGHT:
                session = self.sessions.open()
                return _with_cookie(RedirectResponse(_local(target), 303), session)
            error, status = "That is not the server's API key.", 401
            if verdict is Verdict.LOCKED:
                wait = self.sessions.keys.retry_after(client)
                error, status, headers = locked_message(wait), 429, {"retry-after": str(wait)}
        html = self.render("login.html.j2", None, error=error, next=_local(target))
        return HTMLResponse(html, status, headers)

    def _page(
        self, handler: Page, post: bool = False, shows_form: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` for a session: a POST needs one (and its CSRF token); with a key every
        page does. Without a key, a page that ``shows_form`` (a state-changing one) starts one, and
        no other page sets a cookie."""

        async def run(request: Request) -> Response:
            session = self.sessions.find(request.cookies.get(COOKIE))
            fresh = None
            if session is None:
                if self.sessions.needs_key or post:
                    if post:
                        return self._refuse("Your session has ended: open the page again.")
                    return RedirectResponse(f"/login?next={request.url.path}", 303)
                if shows_form:
                    session = fresh = self.sessions.open()
            if post:
                assert session is not None
                form = await request.form()
                if not self.sessions.csrf_ok(session, str(form.get("csrf", ""))):
                    return self._refuse("The form's security token is missing or stale.")
            response = await handler(request, session)
            return _with_cookie(response, fresh) if fresh is not None else response

        return run

    def _refuse(self, why: str) -> Response:
        html = self.render("message.html.j2", None, title="Refused", message=why)
        return HTMLResponse(html, 403)

    def render(self, template: str, session: Session | None, **values: Any) -> str:
        csrf = session.csrf if session is not None else ""
        return self.env.get_template(template).render(csrf=csrf, **values)

    # --- stored completions -------------------------------------------------------------------

    async def completions(
        self, request: Request, session: Session | None, **extra: Any
    ) -> Response:
        where = extra.pop("where", None) or queries.CompletionFilter.from_query(
            request.query_params
        )
        before = request.query_params.get("before", "")
        try:
            cursor = whole_number(before, "before", 0, MAX_CURSOR) if before else None
            rows, next_cursor = await run_in_threadpool(queries.page, self.app.store, where, cursor)
        except ApiError as exc:
            rows, next_cursor, extra["error"] = [], None, exc.message
        except ValueError as exc:
            rows, next_cursor, extra["error"] = [], None, str(exc)
        models = await run_in_threadpool(self._model_ids)
        html = self.render(
            "completions.html.j2",
            session,
            rows=rows,
            where=where,
            next_cursor=next_cursor,
            models=models,
            stored_models=await run_in_threadpool(queries.models, self.app.store),
            **extra,
        )
        return HTMLResponse(html, 400 if extra.get("error") else 200)

    async def completion(self, request: Request, session: Session | None) -> Response:
        record = await run_in_threadpool(
            self.app.store.get, "completion", request.path_params["cid"]
        )
        if record is None:
            return self._missing("stored completion", request.path_params["cid"])
        html = self.render("completion.html.j2", session, body=record.body, extra=record.extra)
        return HTMLResponse(html)

    async def distill(self, request: Request, session: Session | None) -> Response:
        form = await request.form()
        where = queries.CompletionFilter.from_query(form)
        try:
            if form.get("all") == "1":
                ids = await run_in_threadpool(
                    queries.matching_ids, self.app.store, where, distill.MAX_SELECTION + 1
                )
            else:
                ids = [str(v) for v in form.getlist("id")]
            job = await run_in_threadpool(distill.start, self.app, distill.parse_request(form, ids))
        except (distill.SelectionError, ValueError) as exc:
            return await self.completions(
                request, session, error=f"Not distilled: {exc}", where=where
            )
        return RedirectResponse(f"/jobs/{job['id']}", 303)

    # --- jobs ---------------------------------------------------------------------------------

    async def jobs(self, request: Request, session: Session | None) -> Response:
        listed = await run_in_threadpool(self.app.jobs.list, None, 100, {})
        return HTMLResponse(self.render("jobs.html.j2", session, jobs=listed["data"]))

    async def job(self, request: Request, session: Session | None) -> Response:
        job_id = request.path_params["job_id"]
        try:
            job, events, checkpoints = await run_in_threadpool(self._job_parts, job_id)
        except ApiError:
            return self._missing("fine-tuning job", job_id)
        lines = await run_in_threadpool(self._file_lines, job["training_file"], 20)
        html = self.render(
            "job.html.j2",
            session,
            job=job,
            events=events,
            checkpoints=checkpoints,
            chart=loss_chart(events),
            method_chart=method_chart(events),
            lines=lines,
            running=job["status"] not in FINAL,
        )
        return HTMLResponse(html)

    async def cancel(self, request: Request, session: Session | None) -> Response:
        job_id = request.path_params["job_id"]
        try:
            await run_in_threadpool(self.app.jobs.cancel, job_id)
        except ApiError as exc:
            html = self.render(
                "message.html.j2", session, title="Not cancelled", message=exc.message
            )
            return HTMLResponse(html, exc.status)
        return RedirectResponse(f"/jobs/{job_id}", 303)

    def _job_parts(self, job_id: str) -> tuple[dict[str, Any], list[Any], list[Any]]:
        job = self.app.jobs.retrieve(job_id)
        events = self.app.jobs.events(job_id, None, 10_000)["data"][::-1]
        checkpoints = self.app.jobs.checkpoints(job_id, None, 100)["data"]
        return job, events, checkpoints

    def _file_lines(self, file_id: str, limit: int) -> list[str]:
        """The file's first lines, read from its first 64 KB only."""
        try:
            return self.app.files.head(file_id, limit)
        except (ApiError, OSError):
            return []

    def _line_count(self, file_id: str) -> int | None:
        try:
            return self.app.files.count_lines(file_id)
        except (ApiError, OSError):
            return None

    # --- models and the playground --------------------------------------------------------------

    async def models(self, request: Request, session: Session | None) -> Response:
        rows = await run_in_threadpool(self._lineage)
        # The export command names this server's data directory, to run from any folder
        data_dir = shlex.quote(str(self.data_dir.resolve()))
        return HTMLResponse(self.render("models.html.j2", session, models=rows, data_dir=data_dir))

    def _lineage(self) -> list[dict[str, Any]]:
        jobs = {
            job["fine_tuned_model"]: job
            for job in self.app.jobs.list(None, 10_000, {})["data"]
            if job.get("fine_tuned_model")
        }
        rows = []
        for body in self.app.registry.bodies():
            job = jobs.get(body["id"])
            lines = self._line_count(job["training_file"]) if job else None
            rows.append({"model": body, "job": job, "examples": lines})
        return rows

    def _model_ids(self) -> list[str]:
        return [body["id"] for body in self.app.registry.bodies()]

    async def playground(self, request: Request, session: Session | None) -> Response:
        models = await run_in_threadpool(self._model_ids)
        source = await request.form() if request.method == "POST" else request.query_params
        sides = [
            {
                "model": str(source.get(f"model_{side}", "")) or (models[0] if models else ""),
                "system": str(source.get(f"system_{side}", "")),
                "reply": None,
                "error": None,
            }
            for side in ("a", "b")
        ]
        prompt = str(source.get("prompt", ""))
        if request.method == "POST" and prompt.strip():
            for side in sides:
                side["reply"], side["error"] = await self._ask(side, prompt)
        html = self.render("playground.html.j2", session, models=models, sides=sides, prompt=prompt)
        return HTMLResponse(html)

    async def _ask(self, side: dict[str, Any], prompt: str) -> tuple[str | None, str | None]:
        from distill_server.services.schemas import ChatRequest

        messages = [{"role": "system", "content": side["system"]}] if side["system"] else []
        messages.append({"role": "user", "content": prompt})
        try:
            request = ChatRequest.model_validate(
                {
                    "model": side["model"],
                    "messages": messages,
                    "temperature": 0,
                    "max_tokens": _PLAYGROUND_TOKENS,
                }
            )
            prepared = await run_in_threadpool(self.app.chat.prepare, request)
            future = self.app.chat.submit(prepared)
            result = await run_in_threadpool(future.result)
        except ApiError as exc:
            return None, exc.message
        return result.text, None

    # --- reports ------------------------------------------------------------------------------

    async def report_list(
        self, request: Request, session: Session | None, **extra: Any
    ) -> Response:
        found = sorted(self.reports.glob("*.html"), key=lambda p: p.stat().st_mtime, reverse=True)
        reports = [
            {"name": p.name, "size": p.stat().st_size, "mtime": p.stat().st_mtime} for p in found
        ]
        html = self.render("reports.html.j2", session, reports=reports, **extra)
        return HTMLResponse(html, 400 if extra.get("error") else 200)

    async def upload_report(self, request: Request, session: Session | None) -> Response:
        form = await request.form()
        upload = form.get("report")
        name = Path(str(getattr(upload, "filename", "") or "")).name
        if upload is None or isinstance(upload, str) or not _REPORT_NAME.fullmatch(name):
            return await self.report_list(
                request, session, error="Choose an .html report (letters, digits, '.', '-', '_')."
            )
        try:
            data = await upload.read()
        finally:
            await form.close()  # the spooled temporary file of the part
        await run_in_threadpool(_write_report, self.reports / name, data)
        return RedirectResponse("/reports", 303)

    async def report(self, request: Request, session: Session | None) -> Response:
        name = request.path_params["name"]
        path = self.reports / name
        if not _REPORT_NAME.fullmatch(name) or not path.is_file():
            return self._missing("report", name)
        # A report is a page of its own: scripts run, but in a sandbox with no network.
        headers = {"content-security-policy": _REPORT_POLICY}
        return FileResponse(path, media_type="text/html", headers=headers)

    def _missing(self, what: str, name: str) -> Response:
        message = f"No {what} {name!r}."
        html = self.render("message.html.j2", None, title="Not found", message=message)
        return HTMLResponse(html, 404)


def _write_report(path: Path, data: bytes) -> None:
    private_dir(path.parent)
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_bytes(data)
    os.chmod(temporary, 0o600)
    temporary.replace(path)


def _with_cookie(response: Response, session: Session) -> Response:
    response.set_cookie(COOKIE, session.id, httponly=True, samesite="strict", path="/")
    return response


def _local(target: str) -> str:
    """Only paths of this server after a login: never another site."""
    return target if target.startswith("/") and not target.startswith("//") else "/completions"


def _when(epoch: Any) -> str:
    if not isinstance(epoch, int | float) or not epoch:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
