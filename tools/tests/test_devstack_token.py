"""The local stack wires the embedder's service token: the embedder and the search-api get the
same fresh secret, unless the caller chose one."""

from __future__ import annotations

from cliprs_tools.devstack import Ports, stack_env


def test_the_stack_gives_the_embedder_and_the_search_api_one_token() -> None:
    env = stack_env(Ports(), {})
    token = env["EMBEDDER_SERVICE_TOKEN"]
    assert len(token) >= 32 and env["SEARCH_EMBEDDER_TOKEN"] == token
    assert stack_env(Ports(), {})["EMBEDDER_SERVICE_TOKEN"] != token  # fresh per stack
    chosen = stack_env(Ports(), {"EMBEDDER_SERVICE_TOKEN": "x" * 40})
    assert chosen["EMBEDDER_SERVICE_TOKEN"] == chosen["SEARCH_EMBEDDER_TOKEN"] == "x" * 40
