"""Fixtures for the embedded server's tests: a tiny model, a running server, the API contract."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from operator import attrgetter
from pathlib import Path
from typing import Any

import pytest

SPEC_ENV = "DISTILL_OPENAPI_SPEC"
REPO = Path(__file__).resolve().parents[2]


def spec_path() -> Path:
    """The OpenAI contract: ``$DISTILL_OPENAPI_SPEC``, else ``../shared/openai/openapi.yaml``."""
    return Path(os.environ.get(SPEC_ENV) or REPO.parent / "shared" / "openai" / "openapi.yaml")


class OpenApi:
    """Validates response bodies against the schema each operation declares."""

    def __init__(self, document: dict[str, Any]) -> None:
        from jsonschema import Draft202012Validator
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self._registry = Registry().with_resource("urn:openapi", resource)
        self._document = document
        self._validator = Draft202012Validator

    def schema_of(self, operation_id: str, status: str = "200") -> str:
        """The JSON pointer of an operation's JSON response schema."""
        for path, operations in self._document["paths"].items():
            for method, operation in operations.items():
                if isinstance(operation, dict) and operation.get("operationId") == operation_id:
                    escaped = path.replace("~", "~0").replace("/", "~1")
                    return (
                        f"urn:openapi#/paths/{escaped}/{method}/responses/{status}"
                        "/content/application~1json/schema"
                    )
        raise LookupError(f"no operation {operation_id!r} in the spec")

    def validate(self, operation_id: str, body: Any) -> None:
        self.validate_ref(self.schema_of(operation_id), body)

    def validate_schema(self, name: str, body: Any) -> None:
        self.validate_ref(f"urn:openapi#/components/schemas/{name}", body)

    def validate_ref(self, ref: str, body: Any) -> None:
        validator = self._validator({"$ref": ref}, registry=self._registry)
        errors = sorted(validator.iter_errors(body), key=str)
        assert not errors, f"{ref}: {errors[0].message} at {list(errors[0].absolute_path)}"


@pytest.fixture(scope="session")
def openapi() -> OpenApi:
    import yaml

    path = spec_path()
    if not path.is_file():
        pytest.skip(f"OpenAI spec not found at {path}; set {SPEC_ENV} to its openapi.yaml")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open() as stream:
        return OpenApi(yaml.load(stream, Loader=loader))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_model import create_tiny_model

    from distill_server.models import ModelUnavailable

    try:
        return create_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    except ModelUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Any]:
    from distill_server import LocalServer

    with LocalServer(tmp_path_factory.mktemp("server"), models={"tiny": tiny_model}) as srv:
        yield srv


class Api:
    """Drives the server through the real openai SDK, sync or async, checking every body."""

    def __init__(self, mode: str, base_url: str, spec: OpenApi) -> None:
        import openai

        self.mode = mode
        self.spec = spec
        self.base_url = base_url
        if mode == "sync":
            self.client: Any = openai.OpenAI(base_url=base_url, api_key="local", max_retries=0)
        else:
            self.loop = asyncio.Runner()
            self.client = openai.AsyncOpenAI(base_url=base_url, api_key="local", max_retries=0)

    def raw(self, endpoint: str, /, **kwargs: Any) -> Any:
        """``client.<resource>.with_raw_response.<verb>(**kwargs)``, awaited when async."""
        resource, verb = endpoint.rsplit(".", 1)
        call = getattr(attrgetter(resource)(self.client).with_raw_response, verb)
        return call(**kwargs) if self.mode == "sync" else self.loop.run(call(**kwargs))

    def call(self, operation_id: str, endpoint: str, /, **kwargs: Any) -> Any:
        """Call ``endpoint``, validate the JSON body against ``operation_id``, return it parsed."""
        response = self.raw(endpoint, **kwargs)
        self.spec.validate(operation_id, json.loads(response.text))
        return response.parse()

    def error(self, status: int, endpoint: str, /, **kwargs: Any) -> dict[str, Any]:
        """Call ``endpoint`` expecting an OpenAI error with ``status``; returns the error."""
        import openai

        with pytest.raises(openai.APIStatusError) as info:
            self.raw(endpoint, **kwargs)
        assert info.value.status_code == status, info.value.response.text
        body = info.value.response.json()
        self.spec.validate_schema("ErrorResponse", body)
        error: dict[str, Any] = body["error"]
        return error

    def close(self) -> None:
        if self.mode == "sync":
            self.client.close()
        else:
            self.loop.run(self.client.close())
            self.loop.close()


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest, server: Any, openapi: OpenApi) -> Iterator[Api]:
    client = Api(request.param, server.base_url, openapi)
    yield client
    client.close()


def training_lines(n: int = 12, answer: str = "ZEBRA-7") -> list[str]:
    """A chat fine-tune file whose every example answers ``answer``."""
    return [
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "Reply with the code."},
                    {"role": "user", "content": f"Which code goes with item {i}?"},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
        for i in range(n)
    ]


@pytest.fixture
def make_training_file() -> Any:
    return lambda n=12, answer="ZEBRA-7": ("\n".join(training_lines(n, answer)) + "\n").encode()


LOOKUP_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_code",
        "description": "Look up the code of a thing",
        "parameters": {"type": "object", "properties": {"kind": {"type": "string"}}},
    },
}
"""The tool the ``tool_student`` fixture's model learned to call."""
TOOL_PROMPT = [{"role": "user", "content": "Which code goes with item 3?"}]


def tool_training_lines(n: int = 12) -> list[str]:
    """A chat fine-tune file whose every example answers by calling ``lookup_code``."""
    call = {"name": "lookup_code", "arguments": json.dumps({"kind": "item"})}
    return [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Which code goes with item {i}?"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{"id": f"call_{i}", "type": "function", "function": call}],
                    },
                ],
                "tools": [LOOKUP_TOOL],
            }
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tool_student(server: Any) -> str:
    """A tiny model fine-tuned on this server (seconds) to answer by calling ``lookup_code``:
    the tool-call format trained, served and read back as a real model writes it. Returns the
    fine-tuned model's id."""
    import time

    import openai

    data = ("\n".join(tool_training_lines()) + "\n").encode()
    hyper = {"n_epochs": 12, "batch_size": 4, "learning_rate_multiplier": 20}
    with openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0) as client:
        file = client.files.create(file=("tools.jsonl", data), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="tiny",
            training_file=file.id,
            method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
            suffix="tools",
            seed=3,
        )
        deadline = time.monotonic() + 180
        while job.status not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, "the tool-calling fine-tune did not finish"
            time.sleep(0.2)
            job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model
    return job.fine_tuned_model
