"""The Models page's export command names the data directory the server serves."""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

from starlette.requests import Request

from distill_server.dashboard.views import Dashboard


def test_the_export_command_names_the_data_dir(tmp_path: Path) -> None:

    data_dir = tmp_path / "my server data"
    dashboard = Dashboard(None, data_dir, None)  # type: ignore[arg-type]
    row = {
        "model": {"id": "ft:tiny:local:distill:1a2b3c4d"},
        "job": {"id": "ftjob-1", "model": "tiny", "training_file": "file-1"},
        "examples": 3,
    }
    dashboard._lineage = lambda: [row]  # type: ignore[method-assign]
    scope = {"type": "http", "method": "GET", "path": "/models", "headers": [], "query_string": b""}
    response = asyncio.run(dashboard.models(Request(scope), None))  # type: ignore[arg-type]
    page = bytes(response.body).decode()
    quoted = shlex.quote(str(data_dir.resolve()))
    assert (
        f"distill-server export ft:tiny:local:distill:1a2b3c4d --data-dir {quoted} "
        "--to ./student --format peft" in page.replace("&#39;", "'")
    )
