"""Keeps schemathesis' bodies within what the loaded model allows, which the schema cannot
state: the served model's id, a few new tokens (each test stays short), token ids inside
its vocabulary. A value the schema refuses is left as it is, so negative cases stay
negative."""

from __future__ import annotations

import re
from typing import Any

import schemathesis

SERVED_MODEL = "smollm2-135m-instruct"
VOCABULARY = 49_152
NEW_TOKENS = 1
INT32_MAX = 2**31 - 1
_TOKEN_ID = re.compile(r"-?[0-9]+")


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str):
        body["model"] = SERVED_MODEL
    if isinstance(body.get("model_id"), str):
        body["model_id"] = SERVED_MODEL
    for name in ("max_tokens", "max_length", "max_completion_tokens"):
        value = body.get(name)
        # JSON Schema's integers include 7.0.
        whole = type(value) in (int, float) and float(value).is_integer()
        if whole and NEW_TOKENS < value <= INT32_MAX:
            body[name] = NEW_TOKENS
    bias = body.get("logit_bias")
    if isinstance(bias, dict):
        body["logit_bias"] = {_in_vocabulary(key): value for key, value in bias.items()}


def _in_vocabulary(key: Any) -> Any:
    if (
        isinstance(key, str)
        and _TOKEN_ID.fullmatch(key)
        and -INT32_MAX - 1 <= int(key) <= INT32_MAX
    ):
        return str(abs(int(key)) % VOCABULARY)
    return key
