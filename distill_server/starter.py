"""The embedded server as pytest processes share it: one model in memory per data directory.

The first process to need the server on a data directory starts it in-process and owns it;
every other one (xdist workers, a second pytest session, or a ``distill-server`` already
running there) uses the owner's. An owner that is a pytest session, done with its own tests,
waits for the others before it stops.

This module is the plugin's only way into the server package (``lint-imports`` checks it):
``shared_server`` starts or joins the server, ``pending_conversions`` names the models it will
convert first, and the errors are the ones a session may meet.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from distill_server.models import DEFAULT_MODEL_ID, ModelUnavailable, pending_conversions
from distill_server.owner import Attachment, DataDirBusy, Owner, read_owner
from distill_server.server import API_KEY_ENV, LocalServer

__all__ = [
    "DEFAULT_MODEL_ID",
    "DataDirBusy",
    "ModelUnavailable",
    "ModelsNotServed",
    "ServerUnusable",
    "SharedServer",
    "pending_conversions",
    "shared_server",
]

_OWNER_WAIT_S = 30.0
_CLIENTS_WAIT_S = 3600.0
_ATTEMPTS = 3


class ServerUnusable(RuntimeError):
    """The data directory's owner does not answer, or refuses this process's key."""


class ModelsNotServed(ServerUnusable):
    """The data directory's owner answers but does not serve a model this process needs."""


class SharedServer:
    """This process's way to the data directory's server: its own, or another's."""

    def __init__(
        self, base_url: str, server: LocalServer | None, attachment: Attachment | None
    ) -> None:
        self.base_url = base_url
        self.owned = server is not None
        self._server = server
        self._attachment = attachment

    def stop(self) -> None:
        """Stop using it: an owner waits for the other processes using it, then stops it."""
        if self._attachment is not None:
            self._attachment.release()
        if self._server is not None:
            self._server.wait_for_clients(_CLIENTS_WAIT_S)
            self._server.stop()


def shared_server(
    data_dir: Path,
    models: Mapping[str, str | Path] | None,
    api_key: str | None,
    device: str = "auto",
) -> SharedServer:
    """Start the server on ``data_dir``, or use the one that already serves it (on whichever
    ``device`` that one chose)."""
    error: Exception | None = None
    for _ in range(_ATTEMPTS):
        server = LocalServer(data_dir, models, api_key=api_key, device=device)  # type: ignore[arg-type]
        try:
            server.start()
            return SharedServer(server.base_url, server, None)
        except DataDirBusy as busy:
            owner = busy.owner or read_owner(server.data_dir, wait=_OWNER_WAIT_S)
            if owner is None:
                error = busy
                continue
            attachment = Attachment(server.data_dir)
            try:
                _check(owner, api_key, _wanted(models))
            except ModelsNotServed:
                attachment.release()
                raise
            except ServerUnusable as exc:  # the owner may be stopping: try to take over
                attachment.release()
                error = exc
                time.sleep(0.5)
                continue
            return SharedServer(owner.base_url, None, attachment)
    assert error is not None
    raise error


def _wanted(models: Mapping[str, str | Path] | None) -> list[str]:
    if models is None:
        return [DEFAULT_MODEL_ID]
    return list(models)


def _check(owner: Owner, api_key: str | None, wanted: list[str]) -> None:
    """The owner answers with this process's key and serves every model it needs."""
    request = urllib.request.Request(f"{owner.base_url}/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            served = {model["id"] for model in json.load(response)["data"]}
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response's socket
        if exc.code == 401:
            raise ServerUnusable(
                f"The embedded server of this data directory (process {owner.pid}, "
                f"{owner.base_url}) needs an API key; set {API_KEY_ENV} to the key it was "
                "started with."
            ) from None
        raise ServerUnusable(f"{owner.base_url} answered {exc.code} to GET /models.") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ServerUnusable(
            f"Process {owner.pid} owns this data directory but its server at {owner.base_url} "
            f"does not answer ({exc}); stop that process or use another data directory."
        ) from None
    missing = [model for model in wanted if model not in served]
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise ModelsNotServed(
            f"The embedded server of this data directory (process {owner.pid}, "
            f"{owner.base_url}) does not serve {names}, which this session's "
            "distill_local_models asks for; it serves "
            f"{', '.join(repr(m) for m in sorted(served)) or 'no model'}. Stop that server, "
            "or start it with the same models."
        )
