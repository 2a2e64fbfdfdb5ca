"""The patterns the OpenAPI document states accept exactly what the handlers accept."""

from __future__ import annotations

import re

import pytest

from locallab_gguf.durations import DURATION_PATTERN, InvalidKeepAlive, keep_alive_seconds
from locallab_gguf.errors import InvalidModelId
from locallab_gguf.models.ids import MODEL_ID_PATTERN, is_hub_id, parse_hub_id
from tests.support.servers import RunningServer

DURATIONS = ["300", "0", "-1", "0.5", ".5", "5m", "1h30m", "500ms", "-5m", "1.5h", "90s"]
NOT_DURATIONS = ["", "soon", "+5m", "5m\n", " 5m", "1e3", "inf", "nan", "1_000", "5 m", "m", "-"]


@pytest.mark.parametrize("text", DURATIONS + NOT_DURATIONS)
def test_a_keep_alive_text_is_served_exactly_when_the_schema_pattern_allows_it(text: str) -> None:
    allowed = re.search(DURATION_PATTERN, text) is not None and not text.endswith("\n")
    try:
        keep_alive_seconds(text)
        served = True
    except InvalidKeepAlive:
        served = False
    assert served == allowed == (text in DURATIONS)


MODEL_IDS = [
    "smollm2-135m-instruct",
    "owner/repo:file.gguf",
    "owner/repo@v1.0:dir/File.GGUF",
    "hf://owner/repo/dir/file.gguf",
    "hf://owner/repo@main/file.gguf",
    "_owner/re.po_:file.gguf",
    "owner/a.git.b:file.gguf",
    "owner/" + "n" * 96 + ":file.gguf",
    "owner/repo:Q4_K_M",
    "owner/repo@v2:iq2_xxs",
    "owner/repo",
    "hf.co/owner/repo:Q4_K_M",
    "huggingface.co/owner/repo",
    "hf.co/owner/repo:dir/file.gguf",
    "hf.co/name",  # the repository `name` of an owner called hf.co
]
NOT_MODEL_IDS = [
    ":Q",
    "owner/repo:-Q4",
    "owner/repo:Q4.5",
    "owner/repo@a..b:Q4_0",
    "hf.co/owner/repo/more",
    "hf.co/owner./repo",
    "owner/repo:file.bin",
    "owner/repo:../file.gguf",
    "owner/repo:dir//file.gguf",
    "owner/repo@:file.gguf",
    "owner/repo@a..b:file.gguf",
    "owner/repo:dir\\file.gguf",
    "owner:file.gguf",
    "hf://owner/file.gguf",
    # The hub's rules for repository names (huggingface_hub's validate_repo_id).
    "JLJ3c8HFFr.C720v1zOTtrFR-/k6pOXcZ1H:x.gguf",
    "owner/repo-:file.gguf",
    "owner/.repo:file.gguf",
    "owner/re--po:file.gguf",
    "owner/re..po:file.gguf",
    "owner/repo.git:file.gguf",
    "owner/" + "n" * 97 + ":file.gguf",
    "hf://owner./repo/file.gguf",
]


@pytest.mark.parametrize("model_id", MODEL_IDS + NOT_MODEL_IDS)
def test_a_model_id_parses_exactly_when_the_schema_pattern_allows_it(model_id: str) -> None:
    allowed = re.fullmatch(MODEL_ID_PATTERN, model_id) is not None
    try:
        if is_hub_id(model_id):
            parse_hub_id(model_id)
        parses = True
    except InvalidModelId:
        parses = False
    assert parses == allowed == (model_id in MODEL_IDS)


def test_a_request_without_a_body_is_a_400_that_says_so(server: RunningServer) -> None:
    reply = server.client.post("/generate")
    assert reply.status_code == 400
    assert reply.json()["detail"] == "the request body is missing; send a JSON object"


def test_the_schema_lists_each_routes_errors_and_streams(server: RunningServer) -> None:
    paths = server.client.get("/schema/openapi.json").json()["paths"]
    chat = paths["/v1/chat/completions"]["post"]["responses"]
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    assert chat["404"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "openai.wire.ErrorBody"
    )
    assert "application/x-ndjson" in paths["/api/chat"]["post"]["responses"]["200"]["content"]
    assert {"401", "429", "503"} <= set(paths["/health"]["get"]["responses"])
    assert "404" in paths["/models/current"]["get"]["responses"]
