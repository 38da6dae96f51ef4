"""Files and models endpoints, through the openai SDK (sync and async)."""

from __future__ import annotations

from typing import Any


def test_uploaded_file_can_be_listed_read_and_deleted(api: Any, make_training_file: Any) -> None:
    data = make_training_file()
    created = api.call(
        "createFile", "files.create", file=("train.jsonl", data), purpose="fine-tune"
    )
    assert (created.filename, created.bytes, created.purpose) == (
        "train.jsonl",
        len(data),
        "fine-tune",
    )
    listed = api.call("listFiles", "files.list", purpose="fine-tune")
    assert created.id in [f.id for f in listed.data]
    assert created.id not in [
        f.id for f in api.call("listFiles", "files.list", purpose="batch").data
    ]
    got = api.call("retrieveFile", "files.retrieve", file_id=created.id)
    assert got.id == created.id
    assert api.raw("files.content", file_id=created.id).content == data
    deleted = api.call("deleteFile", "files.delete", file_id=created.id)
    assert deleted.deleted is True
    api.error(404, "files.retrieve", file_id=created.id)
    api.error(404, "files.content", file_id=created.id)


def test_upload_with_unknown_purpose_is_400(api: Any) -> None:
    error = api.error(400, "files.create", file=("x.jsonl", b"{}\n"), purpose="homework")
    assert error["param"] == "purpose" and "fine-tune" in error["message"]


def test_files_list_newest_first_with_cursor(api: Any) -> None:
    ids = [
        api.call("createFile", "files.create", file=(f"{i}.jsonl", b"{}\n"), purpose="batch").id
        for i in range(3)
    ]
    page = api.call("listFiles", "files.list", purpose="batch", limit=2)
    assert [f.id for f in page.data][:2] == ids[::-1][:2]
    after = api.call("listFiles", "files.list", purpose="batch", after=ids[1], limit=10)
    assert ids[0] in [f.id for f in after.data] and ids[2] not in [f.id for f in after.data]


def test_models_list_and_retrieve_the_configured_base(api: Any) -> None:
    listed = api.call("listModels", "models.list")
    assert "tiny" in [m.id for m in listed.data]
    model = api.call("retrieveModel", "models.retrieve", model="tiny")
    assert (model.id, model.object) == ("tiny", "model")


def test_unknown_model_retrieve_is_404(api: Any) -> None:
    error = api.error(404, "models.retrieve", model="ft:nothing:local::12345678")
    assert error["code"] == "model_not_found" and "tiny" in error["message"]
