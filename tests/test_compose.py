"""deploy/docker-compose.yml and deploy/Dockerfile, checked without a Docker engine.

- The compose file validates against the Compose Specification JSON schema (the copy that
  check-jsonschema vendors, as ``check-jsonschema --builtin-schema vendor.compose-spec`` uses).
- Its environment matches the code: every prefixed variable is a field of its settings class
  (catches typos), and each service's settings load from exactly that environment.
- Its builds match the Dockerfile: every build target is a stage of deploy/Dockerfile, and only
  the embedder (and tools) targets carry torch.
- Its exposure matches the README's security section: only the page, the search-api and the tiler
  publish ports on every interface; the embedder publishes none and needs a service token that
  the search-api sends (one required host variable); the tiler follows the search-api's read rule.

Each check takes the parsed compose dict (or the Dockerfile's text) and returns a list of
problems, so the negative tests at the bottom can feed it a broken copy and see it complain.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import jsonschema
import pytest
import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from cliprs.settings import CoreSettings
from cliprs_embedder.settings import EmbedderSettings
from cliprs_indexer.settings import IndexerSettings
from cliprs_model.settings import ModelSettings
from cliprs_search.settings import SearchSettings
from cliprs_tiler.settings import TilerSettings
from cliprs_web.settings import WebSettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = ROOT / "deploy"
COMPOSE_FILE = DEPLOY_DIR / "docker-compose.yml"
DOCKERFILE = DEPLOY_DIR / "Dockerfile"

# HTTP services -> their settings class (whose default `port` is the container port).
HTTP_SERVICES: dict[str, type[BaseSettings]] = {
    "tiler": TilerSettings,
    "embedder": EmbedderSettings,
    "search-api": SearchSettings,
    "web": WebSettings,
}
SETTINGS_BY_PREFIX: dict[str, type[BaseSettings]] = {
    "CLIPRS_": CoreSettings,
    "CLIP_": ModelSettings,
    "TILER_": TilerSettings,
    "EMBEDDER_": EmbedderSettings,
    "INDEXER_": IndexerSettings,
    "SEARCH_": SearchSettings,
    "WEB_": WebSettings,
}
# The services a browser or an API client talks to: the only ones publishing ports on every
# interface. Anything else publishes nothing, or binds 127.0.0.1 (an operator's tunnel).
PUBLIC_SERVICES = {"web", "search-api", "tiler"}
# Reached inside the compose network only: no published port at all, not even on loopback.
UNPUBLISHED_SERVICES = {"embedder", "postgis", "redis"}
LOOPBACK = {"127.0.0.1", "::1", "[::1]", "localhost"}
# Variables with a settings prefix that the code reads straight from os.environ.
EXTRA_ENV: set[str] = set()
# The only Dockerfile targets allowed to carry torch (GBs; the light services never need it).
TORCH_TARGETS = {"embedder", "tools"}
# Targets built outside compose that must exist too.
EXTRA_TARGETS = {"tools"}
# The repository's installable packages (folders with a pyproject.toml).
PACKAGE_DIRS = ["libs/core", "libs/http", "libs/model", "libs/testing", "tools"] + [
    f"services/{name}" for name in ("tiler", "embedder", "indexer", "search-api", "web")
]


# --------------------------------------------------------------------------------------------
# Reading the compose file
# --------------------------------------------------------------------------------------------


def load_compose(text: str | None = None) -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text() if text is None else text)


def services_of(compose: dict) -> dict[str, dict]:
    return compose.get("services") or {}


_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<named>[A-Za-z_]\w*))"
)


def interpolate(value: str, host_env: dict[str, str] | None = None) -> str:
    """Compose's variable interpolation: ``$$`` -> ``$``, ``${VAR}``, ``${VAR:-default}``..."""
    host_env = host_env or {}

    def repl(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["named"]
        op, arg = m["op"], m["arg"] or ""
        present = name in host_env
        val = host_env.get(name, "")
        if op in (":-", ":?"):
            return val if val else (arg if op == ":-" else "")
        if op in ("-", "?"):
            return val if present else (arg if op == "-" else "")
        if op == ":+":
            return arg if val else ""
        if op == "+":
            return arg if present else ""
        return val

    return _INTERPOLATION.sub(repl, value)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def environment(svc: dict) -> dict[str, str]:
    """A service's ``environment`` (map or ``KEY=VALUE`` list), values as written."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict((*item.split("=", 1), "")[:2] for item in env)
    return {k: _scalar(v) for k, v in env.items()}


def container_env(svc: dict, host_env: dict[str, str] | None = None) -> dict[str, str]:
    """What the container's environment holds once compose has interpolated the file."""
    return {k: interpolate(v, host_env) for k, v in environment(svc).items()}


def published_ports(svc: dict) -> list[tuple[int | None, int]]:
    """(host port, container port) of each ``ports`` entry."""
    result = []
    for entry in svc.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            result.append((int(published) if published else None, int(entry["target"])))
            continue
        parts = str(entry).split("/")[0].rsplit(":", 2)
        container = int(parts[-1])
        host = int(parts[-2]) if len(parts) >= 2 and parts[-2] else None
        result.append((host, container))
    return result


def port_bindings(svc: dict) -> list[tuple[str | None, int | None, int]]:
    """(host address, host port, container port) of each ``ports`` entry; address None: every
    interface (Docker's default)."""
    result = []
    for entry in svc.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            result.append((entry.get("host_ip"), int(published) if published else None, int(entry["target"])))
            continue
        parts = str(entry).split("/")[0].rsplit(":", 2)
        container = int(parts[-1])
        host = int(parts[-2]) if len(parts) >= 2 and parts[-2] else None
        address = parts[0] if len(parts) == 3 and parts[0] else None
        result.append((address, host, container))
    return result


def container_ports(svc: dict) -> list[int]:
    """The ports a service listens on as compose declares them: published, else ``expose``d."""
    published = [c for _, c in published_ports(svc)]
    return published or [int(str(p).split("/")[0]) for p in svc.get("expose") or []]


def settings_class_for(var: str) -> type[BaseSettings] | None:
    matches = [p for p in SETTINGS_BY_PREFIX if var.startswith(p)]
    return SETTINGS_BY_PREFIX[max(matches, key=len)] if matches else None


def env_prefix_of(cls: type[BaseSettings]) -> str:
    return cls.model_config.get("env_prefix", "")


# --------------------------------------------------------------------------------------------
# Checks on the compose file
# --------------------------------------------------------------------------------------------


@cache
def compose_schema() -> dict[str, Any]:
    """The Compose Specification JSON schema, as vendored by check-jsonschema."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))


def check_schema(compose: dict) -> list[str]:
    """The file is a valid Compose file (unknown keys, wrong types, bad enum values...)."""
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in sorted(validator.iter_errors(compose), key=lambda e: list(map(str, e.absolute_path)))
    ]


def check_env_names(compose: dict) -> list[str]:
    """Every prefixed variable is a field of its settings class (catches typos)."""
    problems = []
    for name, svc in services_of(compose).items():
        for var in environment(svc):
            cls = settings_class_for(var)
            if cls is None or var in EXTRA_ENV:
                continue
            field_name = var[len(env_prefix_of(cls)) :].lower()
            if field_name not in cls.model_fields:
                problems.append(f"{name}: {var} is not a setting: {cls.__name__} has no field {field_name!r}")
    return problems


def load_service_settings(svc: dict, name: str) -> dict[type[BaseSettings], BaseSettings]:
    """Instantiate every settings class the service's environment configures, from exactly
    that environment (as the container would see it with no host variables set)."""
    env = container_env(svc)
    classes = {settings_class_for(v) for v in env} - {None}
    if name in HTTP_SERVICES:
        classes.add(HTTP_SERVICES[name])
    loaded = {}
    with mock.patch.dict(os.environ, env, clear=True):
        for cls in classes:
            loaded[cls] = cls()
    return loaded


def check_settings_load(compose: dict) -> list[str]:
    """The environment parses, and HTTP services listen on all interfaces on their port."""
    problems = []
    for name, svc in services_of(compose).items():
        try:
            loaded = load_service_settings(svc, name)
        except ValidationError as exc:
            problems.append(f"{name}: environment does not parse: {exc}")
            continue
        cls = HTTP_SERVICES.get(name)
        if cls is None:
            continue
        settings = loaded[cls]
        if settings.host != "0.0.0.0":
            problems.append(f"{name}: listens on {settings.host}, unreachable from outside the container")
        ports = container_ports(svc)
        if ports and settings.port != ports[0]:
            problems.append(f"{name}: listens on port {settings.port}, publishes {ports[0]}")
    return problems


_REQUIRED_VAR = re.compile(r"^\$\{(?P<name>[A-Za-z_]\w*):\?[^}]+\}$")


def check_exposure(compose: dict) -> list[str]:
    """Only the public services publish ports on every interface; the embedder, PostGIS and
    Redis publish none; everything else binds loopback. The embedder's service token is a
    required host variable (compose refuses to start without it) that the search-api sends, and
    the tiler's read rule is the search-api's."""
    problems = []
    services = services_of(compose)
    for name, svc in services.items():
        for address, host, container in port_bindings(svc):
            if name in UNPUBLISHED_SERVICES:
                problems.append(
                    f"{name}: publishes port {container}; it must be reachable inside compose only"
                )
            elif name not in PUBLIC_SERVICES and address not in LOOPBACK:
                problems.append(
                    f"{name}: publishes port {host or container} on every interface; bind it to "
                    "127.0.0.1 or publish nothing"
                )
    embedder = environment(services.get("embedder", {}))
    token = embedder.get("EMBEDDER_SERVICE_TOKEN", "")
    if not _REQUIRED_VAR.match(token):
        problems.append(
            "embedder: EMBEDDER_SERVICE_TOKEN must be a required host variable (${VAR:?message}), "
            f"not {token!r}"
        )
    search = environment(services.get("search-api", {}))
    if search.get("SEARCH_EMBEDDER_TOKEN") != token:
        problems.append("search-api: SEARCH_EMBEDDER_TOKEN is not the embedder's EMBEDDER_SERVICE_TOKEN")
    reads = search.get("SEARCH_REQUIRE_KEY_FOR_READS")
    if environment(services.get("tiler", {})).get("TILER_REQUIRE_KEY_FOR_READS") != reads:
        problems.append(
            "tiler: TILER_REQUIRE_KEY_FOR_READS is not the search-api's SEARCH_REQUIRE_KEY_FOR_READS"
        )
    return problems


# --------------------------------------------------------------------------------------------
# Reading the Dockerfile
# --------------------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        word, _, rest = (current + line).strip().partition(" ")
        instructions.append((word.upper(), rest.strip()))
        current = ""
    return instructions


@dataclass
class Stage:
    name: str
    base: str  # the image or stage named by FROM
    copies_from: set[str] = field(default_factory=set)  # COPY --from=<stage>
    runs: list[str] = field(default_factory=list)


def dockerfile_stages(text: str) -> dict[str, Stage]:
    """The build stages by name (an unnamed stage is named by its index, as Docker does)."""
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for word, args in dockerfile_instructions(text):
        if word == "FROM":
            parts = [p for p in args.split() if not p.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].lower() == "as" else str(len(stages))
            stage = stages[name] = Stage(name=name, base=parts[0])
        elif stage is None:
            continue  # ARG before the first FROM
        elif word == "RUN":
            stage.runs.append(args)
        elif word == "COPY" and (m := re.search(r"--from=(\S+)", args)):
            stage.copies_from.add(m.group(1))
    return stages


def stage_ancestry(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and every stage it builds on (FROM or COPY --from), parents first."""
    seen: dict[str, Stage] = {}

    def visit(current: str) -> None:
        if current in seen or current not in stages:
            return
        stage = stages[current]
        for parent in [stage.base, *sorted(stage.copies_from)]:
            visit(parent)
        seen[current] = stage

    visit(name)
    return list(seen.values())


def _requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;@]", req, maxsplit=1)[0].lower()


def _project(package_dir: str, root: Path = ROOT) -> dict[str, Any]:
    return tomllib.loads((root / package_dir / "pyproject.toml").read_text())["project"]


def torch_packages(root: Path = ROOT) -> set[str]:
    """The package folders whose install pulls torch (directly or through another package)."""
    deps = {
        d: {_requirement_name(r) for r in _project(d, root).get("dependencies", [])} for d in PACKAGE_DIRS
    }
    names = {d: _project(d, root)["name"].lower() for d in PACKAGE_DIRS}
    heavy = {"torch"}
    while True:
        more = {names[d] for d in PACKAGE_DIRS if deps[d] & heavy} - heavy
        if not more:
            return {d for d in PACKAGE_DIRS if names[d] in heavy}
        heavy |= more


def torch_pin(root: Path = ROOT) -> str:
    """The exact torch version libs/model pins."""
    for req in _project("libs/model", root).get("dependencies", []):
        if _requirement_name(req) == "torch" and (m := re.search(r"==\s*([\w.+]+)", req)):
            return m.group(1)
    raise AssertionError("libs/model pins no exact torch version")


def _installs_torch(run: str, heavy_dirs: set[str]) -> bool:
    if "pip install" not in run:
        return False
    if re.search(r"(?<![\w./-])[\"']?torch\b", run):
        return True
    return any(re.search(rf"\./{re.escape(d)}(?![\w/-])", run) for d in heavy_dirs)


def torch_stages(text: str, root: Path = ROOT) -> set[str]:
    """The stages whose image carries torch: they install it, or build on a stage that does."""
    stages = dockerfile_stages(text)
    heavy_dirs = torch_packages(root)
    own = {name for name, s in stages.items() if any(_installs_torch(r, heavy_dirs) for r in s.runs)}
    return {name for name in stages if any(s.name in own for s in stage_ancestry(stages, name))}


def build_targets(compose: dict) -> dict[str, str | None]:
    """compose service -> the Dockerfile target it builds (None: no target named)."""
    targets = {}
    for name, svc in services_of(compose).items():
        build = svc.get("build")
        if build is not None:
            targets[name] = build.get("target") if isinstance(build, dict) else None
    return targets


# --------------------------------------------------------------------------------------------
# Checks on the builds
# --------------------------------------------------------------------------------------------


def check_build_targets(compose: dict, dockerfile_text: str | None = None) -> list[str]:
    """Every build uses the repository root as context, deploy/Dockerfile, and one of its stages."""
    text = DOCKERFILE.read_text() if dockerfile_text is None else dockerfile_text
    stages = dockerfile_stages(text)
    problems = []
    for name, svc in services_of(compose).items():
        build = svc.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = (DEPLOY_DIR / build.get("context", ".")).resolve()
        if context != ROOT.resolve():
            problems.append(f"{name}: build context {build.get('context')!r} is {context}, not the repo root")
        dockerfile = (context / build.get("dockerfile", "Dockerfile")).resolve()
        if dockerfile != DOCKERFILE.resolve():
            problems.append(f"{name}: builds {build.get('dockerfile')!r}, expected deploy/Dockerfile")
        target = build.get("target")
        if not target:
            problems.append(f"{name}: names no build target (the Dockerfile's last stage is not a service)")
        elif target not in stages:
            problems.append(f"{name}: build target {target!r} is not a stage of deploy/Dockerfile")
    for target in sorted(EXTRA_TARGETS - set(stages)):
        problems.append(f"target {target!r} is not a stage of deploy/Dockerfile")
    return problems


def check_torch_targets(compose: dict, dockerfile_text: str | None = None) -> list[str]:
    """Only the embedder (and tools) targets carry torch; the embedder gets the pinned torch
    from the PyTorch wheel index BEFORE libs/model, whose pin would otherwise pull it from PyPI."""
    text = DOCKERFILE.read_text() if dockerfile_text is None else dockerfile_text
    stages = dockerfile_stages(text)
    with_torch = torch_stages(text)
    targets = {t for t in build_targets(compose).values() if t} | (EXTRA_TARGETS & set(stages))
    problems = [
        f"target {t!r} carries torch; only {sorted(TORCH_TARGETS)} may"
        for t in sorted(targets & with_torch - TORCH_TARGETS)
    ]
    if "embedder" not in with_torch:
        return [*problems, "target 'embedder' does not install torch"]
    runs = [r for s in stage_ancestry(stages, "embedder") for r in s.runs if "pip install" in r]
    torch_runs = [i for i, r in enumerate(runs) if re.search(r"[\"']?torch==", r)]
    model_runs = [i for i, r in enumerate(runs) if re.search(r"\./libs/model(?![\w/-])", r)]
    if not torch_runs:
        problems.append("embedder: no `pip install torch==...` of its own")
    else:
        run = runs[torch_runs[0]]
        if f"torch=={torch_pin()}" not in run:
            problems.append(f"embedder: does not install torch=={torch_pin()} (the pin of libs/model)")
        if "--index-url" not in run:
            problems.append("embedder: torch is not installed from the PyTorch wheel index (--index-url)")
        if model_runs and model_runs[0] < torch_runs[0]:
            problems.append("embedder: torch must be installed BEFORE ./libs/model")
    return problems


# --------------------------------------------------------------------------------------------
# Tests: the real files
# --------------------------------------------------------------------------------------------

ALL_CHECKS = [
    check_schema,
    check_env_names,
    check_settings_load,
    check_exposure,
    check_build_targets,
    check_torch_targets,
]


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_compose_is_consistent(compose: dict, check: Callable[[dict], list[str]]) -> None:
    assert check(compose) == []


def test_settings_seen_by_the_containers(compose: dict) -> None:
    """Spot-check what the services actually get once compose has interpolated the file."""
    services = services_of(compose)
    search = load_service_settings(services["search-api"], "search-api")[SearchSettings]
    assert search.embedder_url == "http://embedder:8002"
    assert search.tiler_public_url == "http://localhost:8001"
    web = load_service_settings(services["web"], "web")[WebSettings]
    assert web.search_api_check_url == "http://search-api:8000"
    assert web.mapbox_token is None or not web.mapbox_token.get_secret_value()
    tiler = load_service_settings(services["tiler-worker"], "tiler-worker")
    core = tiler[CoreSettings]
    assert core.database_url == "postgresql://cliprs:cliprs@postgis:5432/cliprs"
    assert core.redis_url == "redis://redis:6379/0"
    assert str(core.data_dir) == "/data"
    assert core.tile_sources["mapbox"].endswith("access_token=${MAPBOX_TOKEN}")
    host = {"EMBEDDER_SERVICE_TOKEN": "t" * 64, "REQUIRE_KEY_FOR_READS": "true"}
    with mock.patch.dict(os.environ, container_env(services["embedder"], host), clear=True):
        assert EmbedderSettings().service_token.get_secret_value() == "t" * 64
    with mock.patch.dict(os.environ, container_env(services["search-api"], host), clear=True):
        assert SearchSettings().embedder_token.get_secret_value() == "t" * 64
        assert SearchSettings().require_key_for_reads is True
    with mock.patch.dict(os.environ, container_env(services["tiler"], host), clear=True):
        assert TilerSettings().require_key_for_reads is True
    model = load_service_settings(services["embedder-worker"], "embedder-worker")[ModelSettings]
    assert model.model == "flax-community/clip-rsicd-v2"
    assert str(model.fallback_dir).startswith("/cache/")


def test_interpolate_follows_compose() -> None:
    assert interpolate("a=$${MAPBOX_TOKEN}") == "a=${MAPBOX_TOKEN}"
    assert interpolate("${X:-d}") == "d"
    assert interpolate("${X:-d}", {"X": ""}) == "d"
    assert interpolate("${X-d}", {"X": ""}) == ""
    assert interpolate("${X}/$X/$$X", {"X": "v"}) == "v/v/$X"


def test_only_model_packages_pull_torch() -> None:
    """What the torch check keys on: libs/model and the packages built on it."""
    heavy = torch_packages()
    assert {"libs/model", "services/embedder", "tools"} <= heavy
    assert not heavy & {"libs/core", "libs/http", "services/tiler", "services/indexer", "services/web"}


# --------------------------------------------------------------------------------------------
# Tests: the checks catch broken copies
# --------------------------------------------------------------------------------------------


TEXT_TYPOS = [
    ("SEARCH_EMBEDDER_URL:", "SEARCH_EMBEDER_URL:", check_env_names, "SEARCH_EMBEDER_URL is not a setting"),
    ("      interval: 10s", "      intervall: 10s", check_schema, "'intervall' does not match"),
    ("condition: service_completed_successfully", "condition: service_done", check_schema, "service_done"),
    ("restart: unless-stopped", "restart: [unless-stopped]", check_schema, "is not of type 'string'"),
    ("target: indexer", "target: indexr", check_build_targets, "'indexr' is not a stage"),
]


@pytest.mark.parametrize(("old", "new", "check", "expected"), TEXT_TYPOS, ids=[t[1] for t in TEXT_TYPOS])
def test_typos_in_yaml_text_are_caught(
    old: str, new: str, check: Callable[[dict], list[str]], expected: str
) -> None:
    """Break the YAML text itself, as a typo would, and parse the broken copy from a string."""
    text = COMPOSE_FILE.read_text()
    assert old in text
    problems = check(load_compose(text.replace(old, new, 1)))
    assert any(expected in p for p in problems), problems


def _svc(c: dict, name: str) -> dict:
    return c["services"][name]


def _set_env(name: str, var: str, value: str | None) -> Callable[[dict], None]:
    def mutate(c: dict) -> None:
        env = _svc(c, name)["environment"]
        if value is None:
            env.pop(var, None)
        else:
            env[var] = value

    return mutate


BROKEN = [
    (
        "setting typo",
        _set_env("search-api", "SEARCH_EMBEDER_URL", "x"),
        check_env_names,
        "SEARCH_EMBEDER_URL",
    ),
    ("core typo", _set_env("tiler", "CLIPRS_DATA_DIRECTORY", "/d"), check_env_names, "CLIPRS_DATA_DIRECTORY"),
    (
        "bad value",
        _set_env("indexer", "INDEXER_FLAT_MAX_VECTORS", "many"),
        check_settings_load,
        "does not parse",
    ),
    (
        "loopback host",
        _set_env("tiler", "TILER_HOST", "127.0.0.1"),
        check_settings_load,
        "listens on 127.0.0.1",
    ),
    ("env port", _set_env("embedder", "EMBEDDER_PORT", "9000"), check_settings_load, "listens on port 9000"),
    (
        "embedder published",
        lambda c: _svc(c, "embedder").update(ports=["8002:8002"]),
        check_exposure,
        "embedder: publishes port 8002",
    ),
    (
        "embedder published on loopback",
        lambda c: _svc(c, "embedder").update(ports=["127.0.0.1:8002:8002"]),
        check_exposure,
        "embedder: publishes port 8002",
    ),
    (
        "flower on every interface",
        lambda c: _svc(c, "flower").update(ports=["5555:5555"]),
        check_exposure,
        "flower: publishes port 5555 on every interface",
    ),
    (
        "worker published (long syntax)",
        lambda c: _svc(c, "indexer").update(ports=[{"target": 9000, "published": 9000}]),
        check_exposure,
        "indexer: publishes port 9000 on every interface",
    ),
    (
        "embedder token optional",
        _set_env("embedder", "EMBEDDER_SERVICE_TOKEN", "${EMBEDDER_SERVICE_TOKEN:-}"),
        check_exposure,
        "must be a required host variable",
    ),
    (
        "no embedder token",
        _set_env("embedder", "EMBEDDER_SERVICE_TOKEN", None),
        check_exposure,
        "must be a required host variable",
    ),
    (
        "search-api without the token",
        _set_env("search-api", "SEARCH_EMBEDDER_TOKEN", None),
        check_exposure,
        "SEARCH_EMBEDDER_TOKEN is not the embedder's",
    ),
    (
        "tiler open while the API needs keys",
        _set_env("tiler", "TILER_REQUIRE_KEY_FOR_READS", "false"),
        check_exposure,
        "TILER_REQUIRE_KEY_FOR_READS is not the search-api's",
    ),
    ("unknown key", lambda c: _svc(c, "web").update(imgae="x"), check_schema, "'imgae' was unexpected"),
    (
        "build context",
        lambda c: _svc(c, "web")["build"].update(context="."),
        check_build_targets,
        "not the repo root",
    ),
    (
        "old per-service Dockerfile",
        lambda c: _svc(c, "indexer")["build"].update(dockerfile="services/indexer/Dockerfile"),
        check_build_targets,
        "expected deploy/Dockerfile",
    ),
    (
        "no target",
        lambda c: _svc(c, "web")["build"].pop("target"),
        check_build_targets,
        "names no build target",
    ),
    (
        "unknown target",
        lambda c: _svc(c, "tiler")["build"].update(target="tiler-gpu"),
        check_build_targets,
        "'tiler-gpu' is not a stage",
    ),
]


@pytest.mark.parametrize(("mutate", "check", "expected"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_checks_catch_broken_compose(
    compose: dict, mutate: Callable[[dict], Any], check: Callable[[dict], list[str]], expected: str
) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    problems = check(broken)
    assert any(expected in p for p in problems), problems


def _stage_block(text: str, name: str) -> str:
    """The text of one stage of the Dockerfile, from its FROM to the next one."""
    m = re.search(rf"^FROM \S+ AS {re.escape(name)}\n.*?(?=^FROM |\Z)", text, flags=re.M | re.S)
    assert m, f"no stage {name}"
    return m.group(0)


def _add_to_stage(name: str, line: str) -> Callable[[str], str]:
    def mutate(text: str) -> str:
        block = _stage_block(text, name)
        return text.replace(block, block.replace("\n", f"\n{line}\n", 1), 1)

    return mutate


def _rebase(name: str, parent: str) -> Callable[[str], str]:
    return lambda text: re.sub(
        rf"^FROM \S+ AS {re.escape(name)}$", f"FROM {parent} AS {name}", text, flags=re.M
    )


def _move_torch_after_model(text: str) -> str:
    torch_line = next(line for line in text.splitlines() if line.startswith("RUN") and "torch==" in line)
    block = _stage_block(text, "torch")
    return text.replace(block, block.replace(torch_line + "\n", "", 1) + torch_line + "\n", 1)


BROKEN_DOCKERFILES = [
    (
        "torch in the light venv",
        _add_to_stage("light", 'RUN pip install "torch==2.13.0"'),
        "'tiler' carries torch",
    ),
    (
        "libs/model in a light target",
        _add_to_stage("web", "RUN pip install ./libs/model"),
        "'web' carries torch",
    ),
    (
        "embedder's package in the indexer",
        _add_to_stage("indexer", "RUN pip install ./services/embedder"),
        "'indexer' carries torch",
    ),
    ("search-api built on torch", _rebase("search-api", "torch"), "'search-api' carries torch"),
    # Its own package still pulls torch, but from PyPI (the CUDA build): no pinned install of its own.
    ("embedder without the torch stage", _rebase("embedder", "light"), "no `pip install torch==...`"),
    ("torch after libs/model", _move_torch_after_model, "BEFORE ./libs/model"),
    (
        "torch from PyPI",
        lambda t: t.replace('--index-url "${TORCH_INDEX_URL}" ', ""),
        "from the PyTorch wheel index",
    ),
    ("another torch", lambda t: t.replace('"torch==2.13.0"', '"torch==2.12.0"'), "does not install torch=="),
    ("missing target", lambda t: t.replace(" AS search-api", " AS search"), "'search-api' is not a stage"),
    ("no tools target", lambda t: t.replace(" AS tools", " AS toolbox"), "'tools' is not a stage"),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [b[1:] for b in BROKEN_DOCKERFILES], ids=[b[0] for b in BROKEN_DOCKERFILES]
)
def test_checks_catch_broken_dockerfile(compose: dict, mutate: Callable[[str], str], expected: str) -> None:
    text = DOCKERFILE.read_text()
    broken = mutate(text)
    assert broken != text
    problems = check_build_targets(compose, broken) + check_torch_targets(compose, broken)
    assert any(expected in p for p in problems), problems
