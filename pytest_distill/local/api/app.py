"""The API surface: every endpoint, wired to the component that owns it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pytest_distill.local.api.chat import Chat, Serving
from pytest_distill.local.api.files import Files
from pytest_distill.local.api.httpd import Request, Response, Route, route
from pytest_distill.local.api.jobs import Jobs
from pytest_distill.local.errors import bad_request
from pytest_distill.local.models import ModelSource, Registry
from pytest_distill.local.store import Store
from pytest_distill.local.trainer.worker import Runner


@dataclass(frozen=True, slots=True)
class App:
    """Every component of a running server, built over one data directory."""

    store: Store
    registry: Registry
    files: Files
    jobs: Jobs
    runner: Runner
    chat: Chat
    serving: Serving

    @classmethod
    def open(cls, data_dir: Path, bases: dict[str, ModelSource]) -> App:
        cache = data_dir / "converted"
        bases = {name: replace(source, cache=cache) for name, source in bases.items()}
        store = Store(data_dir / "state.sqlite3")
        registry = Registry(store, bases)
        files = Files(store, data_dir / "files")
        jobs = Jobs(store, files, registry)
        serving = Serving()
        runner = Runner(jobs, data_dir / "adapters")
        return cls(store, registry, files, jobs, runner, Chat(store, registry, serving), serving)

    def close(self) -> None:
        self.runner.stop()
        self.serving.close()
        self.store.close()

    def routes(self) -> list[Route]:
        chat, files, jobs, models = self.chat, self.files, self.jobs, self.registry
        job = "/fine_tuning/jobs/{job_id}"
        return [
            route("POST", "/chat/completions", self._create_completion),
            route("GET", "/chat/completions", self._list_completions),
            route("GET", "/chat/completions/{cid}", lambda r: chat.retrieve(r.params["cid"])),
            route(
                "POST", "/chat/completions/{cid}", lambda r: chat.update(r.params["cid"], r.json())
            ),
            route("DELETE", "/chat/completions/{cid}", lambda r: chat.delete(r.params["cid"])),
            route("GET", "/chat/completions/{cid}/messages", self._completion_messages),
            route("POST", "/files", self._upload),
            route("GET", "/files", self._list_files),
            route("GET", "/files/{file_id}", lambda r: files.retrieve(r.params["file_id"])),
            route("DELETE", "/files/{file_id}", lambda r: files.delete(r.params["file_id"])),
            route("GET", "/files/{file_id}/content", self._file_content),
            route("POST", "/fine_tuning/jobs", lambda r: jobs.create(r.json())),
            route("GET", "/fine_tuning/jobs", self._list_jobs),
            route("GET", job, lambda r: jobs.retrieve(r.params["job_id"])),
            route("POST", job + "/cancel", lambda r: jobs.cancel(r.params["job_id"])),
            route("GET", job + "/events", self._job_events),
            route("GET", job + "/checkpoints", self._job_checkpoints),
            route("GET", "/models", lambda r: {"object": "list", "data": models.bodies()}),
            route("GET", "/models/{model}", lambda r: models.retrieve(r.params["model"])),
            route("DELETE", "/models/{model}", lambda r: models.delete(r.params["model"])),
        ]

    def _create_completion(self, r: Request) -> Response:
        body, batch_size = self.chat.create(r.json())
        # Lets clients and tests see that concurrent requests were decoded together.
        return Response(body, headers={"x-distill-batch-size": str(batch_size)})

    def _list_completions(self, r: Request) -> object:
        limit, order = r.int_query("limit", 20), _order(r, "asc")
        return self.chat.list(
            r.query.get("model"), r.metadata_query(), r.query.get("after"), limit, order
        )

    def _completion_messages(self, r: Request) -> object:
        limit, order = r.int_query("limit", 20), _order(r, "asc")
        return self.chat.messages(r.params["cid"], r.query.get("after"), limit, order)

    def _upload(self, r: Request) -> object:
        form = r.form()
        if "file" not in form or "purpose" not in form:
            raise bad_request("A multipart upload needs `file` and `purpose` fields.", "file")
        filename, data = form["file"]
        purpose = form["purpose"][1].decode()
        return self.files.create(filename or "upload.jsonl", purpose, data)

    def _list_files(self, r: Request) -> object:
        limit, order = r.int_query("limit", 10000), _order(r, "desc")
        return self.files.list(r.query.get("purpose"), r.query.get("after"), limit, order)

    def _file_content(self, r: Request) -> Response:
        data = self.files.content(r.params["file_id"])
        return Response(data, content_type="application/octet-stream")

    def _list_jobs(self, r: Request) -> object:
        limit = r.int_query("limit", 20)
        return self.jobs.list(r.query.get("after"), limit, r.metadata_query())

    def _job_events(self, r: Request) -> object:
        limit = r.int_query("limit", 20)
        return self.jobs.events(r.params["job_id"], r.query.get("after"), limit)

    def _job_checkpoints(self, r: Request) -> object:
        limit = r.int_query("limit", 10)
        return self.jobs.checkpoints(r.params["job_id"], r.query.get("after"), limit)


def _order(r: Request, default: str) -> str:
    order = r.query.get("order", default)
    if order not in ("asc", "desc"):
        raise bad_request(f"`order` must be 'asc' or 'desc', not {order!r}.", "order")
    return order
