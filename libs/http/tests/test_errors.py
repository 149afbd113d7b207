"""The one error map: every kind of failure answers its status, code and shape."""

from __future__ import annotations

import pytest
import redis
import sqlalchemy.exc
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from cliprs.errors import InvalidInput, NotFound, TooLarge, Unavailable
from cliprs_http import install_error_handlers


class Body(BaseModel):
    name: str


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    failures = {
        "invalid": InvalidInput("k must be within 1..200"),
        "missing": NotFound("no area 7"),
        "large": TooLarge("the area needs 9000 tiles; the limit is 5000"),
        "down": Unavailable("the index is not loaded yet"),
        "postgres": sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("password=secret")),
        "redis": redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379"),
        "refused": ConnectionRefusedError(111, "Connection refused"),
        "bug": KeyError("oops"),
    }

    @app.get("/fail/{kind}")
    def fail(kind: str) -> Body:
        raise failures[kind]

    @app.post("/body")
    def body(payload: Body) -> Body:
        return payload

    return app


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("invalid", 400, "invalid_input"),
        ("missing", 404, "not_found"),
        ("large", 422, "too_large"),
        ("down", 503, "unavailable"),
        ("postgres", 503, "unavailable"),
        ("redis", 503, "unavailable"),
        ("refused", 503, "unavailable"),
        ("bug", 500, "internal"),
    ],
)
def test_each_failure_answers_its_status_and_code(kind: str, status: int, code: str) -> None:
    client = TestClient(_app(), raise_server_exceptions=False)
    resp = client.get(f"/fail/{kind}")
    assert resp.status_code == status
    assert resp.json()["error"]["code"] == code
    assert "Traceback" not in resp.text
    assert ("Retry-After" in resp.headers) == (status == 503)


def test_dependency_failures_never_echo_their_message() -> None:
    # A driver's message can carry a connection string with a password.
    resp = TestClient(_app(), raise_server_exceptions=False).get("/fail/postgres")
    assert "secret" not in resp.text and "OperationalError" in resp.json()["error"]["message"]


def test_schema_errors_are_invalid_request_naming_the_field() -> None:
    resp = TestClient(_app()).post("/body", json={"nom": "x"})
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "invalid_request"
    assert "name" in resp.json()["error"]["message"]
