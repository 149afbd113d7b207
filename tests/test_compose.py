"""Consistency of deploy/docker-compose.yml and the Dockerfiles with the services' own code.

No Docker engine is needed: the compose file is parsed with PyYAML and checked against the
settings classes, the Celery queues and the packages' pyproject files. Each check is a small
function taking the parsed compose dict (or a Dockerfile's text) and returning a list of
problems, so the negative tests at the bottom can feed it a broken copy and see it complain.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from cliprs.queue import QUEUE_OF
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

EXPECTED_SERVICES = {
    "postgis",
    "redis",
    "migrate",
    "tiler",
    "tiler-worker",
    "embedder",
    "embedder-worker",
    "indexer",
    "search-api",
    "web",
}
# HTTP services -> their settings class (whose default `port` is the container port).
HTTP_SERVICES: dict[str, type[BaseSettings]] = {
    "tiler": TilerSettings,
    "embedder": EmbedderSettings,
    "search-api": SearchSettings,
    "web": WebSettings,
}
# Celery workers -> (app module, queue).
WORKERS = {
    "tiler-worker": ("cliprs_tiler.tasks", "tiles"),
    "embedder-worker": ("cliprs_embedder.tasks", "embed"),
    "indexer": ("cliprs_indexer.tasks", "index"),
}
# Which service folder (Dockerfile, package) each compose service runs the code of.
SERVICE_DIR = {
    "migrate": "services/search-api",
    "tiler": "services/tiler",
    "tiler-worker": "services/tiler",
    "embedder": "services/embedder",
    "embedder-worker": "services/embedder",
    "indexer": "services/indexer",
    "search-api": "services/search-api",
    "web": "services/web",
}
PACKAGE_DIR = {
    "cliprs_tiler": "services/tiler",
    "cliprs_embedder": "services/embedder",
    "cliprs_indexer": "services/indexer",
    "cliprs_search": "services/search-api",
    "cliprs_web": "services/web",
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
# Variables with a settings prefix that the code reads straight from os.environ.
EXTRA_ENV = {"CLIPRS_CLIP_VOCAB"}
# Services that read/write the database and queues: they wait for the schema.
DB_SERVICES = {"tiler", "tiler-worker", "embedder-worker", "indexer", "search-api"}
# Services sharing the tile cache, vectors and index on the `data` volume at /data.
DATA_SERVICES = {"tiler", "tiler-worker", "embedder-worker", "indexer", "search-api"}
# Services loading CLIP: the Hugging Face cache lives on the `hf-cache` volume.
MODEL_SERVICES = {"embedder", "embedder-worker"}
# Service ports of the infrastructure images.
INFRA_PORTS = {"postgis": 5432, "redis": 6379}
# URLs the browser calls (must be published on the host), and the service behind each.
PUBLIC_URL_VARS = {
    "SEARCH_TILER_PUBLIC_URL": "tiler",
    "WEB_SEARCH_API_URL": "search-api",
    "WEB_TILER_URL": "tiler",
}
# URLs used inside the compose network, and the service each must name.
INTERNAL_URL_VARS = {
    "CLIPRS_DATABASE_URL": "postgis",
    "CLIPRS_REDIS_URL": "redis",
    "SEARCH_EMBEDDER_URL": "embedder",
    "WEB_SEARCH_API_INTERNAL_URL": "search-api",
}
LOCAL_HOSTS = {"localhost", "127.0.0.1", "0.0.0.0", "::1"}
MAPBOX_REF = "${MAPBOX_TOKEN}"
# What a real Mapbox token looks like (public pk., secret sk., temporary tk.).
TOKEN_LIKE = re.compile(r"\b[pst]k\.[A-Za-z0-9_\-]{20,}")


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


def argv(command: Any) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def healthcheck_text(svc: dict) -> str:
    test = (svc.get("healthcheck") or {}).get("test")
    if isinstance(test, list):
        return " ".join(str(t) for t in test[1:])
    return str(test or "")


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


def healthcheck_ports(svc: dict) -> list[int]:
    return [int(p) for p in re.findall(r"https?://[^/:'\"\s]+:(\d+)/healthz", healthcheck_text(svc))]


def depends_on(svc: dict) -> dict[str, Any]:
    deps = svc.get("depends_on") or {}
    return {d: None for d in deps} if isinstance(deps, list) else deps


def volume_mounts(svc: dict) -> dict[str, str]:
    """target -> source of each volume entry (short or long syntax)."""
    mounts = {}
    for entry in svc.get("volumes") or []:
        if isinstance(entry, dict):
            mounts[entry["target"]] = str(entry.get("source", ""))
        else:
            parts = str(entry).split(":")
            if len(parts) >= 2:
                mounts[parts[1]] = parts[0]
    return mounts


def settings_class_for(var: str) -> type[BaseSettings] | None:
    matches = [p for p in SETTINGS_BY_PREFIX if var.startswith(p)]
    return SETTINGS_BY_PREFIX[max(matches, key=len)] if matches else None


def env_prefix_of(cls: type[BaseSettings]) -> str:
    return cls.model_config.get("env_prefix", "")


def default_port(cls: type[BaseSettings]) -> int:
    return cls.model_fields["port"].default


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


# --------------------------------------------------------------------------------------------
# Reading the packages
# --------------------------------------------------------------------------------------------


def _requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;@]", req, maxsplit=1)[0].lower()


def package_dependencies(service_dir: str, root: Path = ROOT) -> list[str]:
    data = tomllib.loads((root / service_dir / "pyproject.toml").read_text())
    return data["project"].get("dependencies", [])


def needs_cliprs(service_dir: str, root: Path = ROOT) -> bool:
    return any(_requirement_name(r) == "cliprs" for r in package_dependencies(service_dir, root))


def torch_pin(root: Path = ROOT) -> str:
    """The exact torch version libs/cliprs pins."""
    for req in package_dependencies("libs/cliprs", root):
        if _requirement_name(req) == "torch":
            m = re.search(r"==\s*([\w.+]+)", req)
            assert m, f"libs/cliprs pins no exact torch version: {req!r}"
            return m.group(1)
    raise AssertionError("libs/cliprs does not depend on torch")


def celery_tasks_of(module: str) -> set[str]:
    """Names of the tasks a service's Celery app module defines. (``app.task`` shares tasks
    with every app of the process, so keep only those whose code is in ``module``.)"""
    app = importlib.import_module(module).app
    return {name for name, task in app.tasks.items() if getattr(task, "__module__", None) == module}


# --------------------------------------------------------------------------------------------
# Checks on the compose file
# --------------------------------------------------------------------------------------------


def check_services_exist(compose: dict) -> list[str]:
    missing = EXPECTED_SERVICES - set(services_of(compose))
    return [f"service {name!r} is missing" for name in sorted(missing)]


def check_builds(compose: dict, deploy_dir: Path = DEPLOY_DIR, root: Path = ROOT) -> list[str]:
    """Every build uses the repository root as context and an existing Dockerfile; services
    sharing an image tag build it the same way; each runs its own service's Dockerfile."""
    problems = []
    builds_by_image: dict[str, list[tuple[str, Any]]] = {}
    for name, svc in services_of(compose).items():
        build = svc.get("build")
        if build is None:
            if name in SERVICE_DIR:
                problems.append(f"{name}: no build section")
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = (deploy_dir / build.get("context", ".")).resolve()
        if context != root.resolve():
            problems.append(f"{name}: build context {build.get('context')!r} is {context}, not the repo root")
        dockerfile = (context / build.get("dockerfile", "Dockerfile")).resolve()
        if not dockerfile.is_file():
            problems.append(f"{name}: Dockerfile {dockerfile} does not exist")
        expected = SERVICE_DIR.get(name)
        if expected and dockerfile != (root / expected / "Dockerfile").resolve():
            problems.append(f"{name}: builds {dockerfile}, expected {expected}/Dockerfile")
        if svc.get("image"):
            builds_by_image.setdefault(svc["image"], []).append((name, build))
    for image, users in builds_by_image.items():
        if any(b != users[0][1] for _, b in users):
            names = ", ".join(n for n, _ in users)
            problems.append(f"image {image!r} is built differently by {names}")
    return problems


def check_http_ports(compose: dict) -> list[str]:
    """Published container port == the settings' default port == the health check's port."""
    problems = []
    services = services_of(compose)
    for name, cls in HTTP_SERVICES.items():
        svc = services.get(name)
        if svc is None:
            continue
        port = default_port(cls)
        ports = published_ports(svc)
        if [c for _, c in ports] != [port]:
            problems.append(f"{name}: publishes container ports {ports}, {cls.__name__}.port is {port}")
        elif ports[0][0] != port:
            problems.append(f"{name}: published on host port {ports[0][0]}, expected {port}")
        health = healthcheck_ports(svc)
        if health != [port]:
            problems.append(f"{name}: health check probes ports {health}, expected [{port}]")
        if "/healthz" not in healthcheck_text(svc):
            problems.append(f"{name}: health check does not GET /healthz")
    return problems


def check_env_names(compose: dict) -> list[str]:
    """Every prefixed variable is a field of its settings class (catches typos)."""
    problems = []
    for name, svc in services_of(compose).items():
        for var in environment(svc):
            cls = settings_class_for(var)
            if cls is None or var in EXTRA_ENV:
                continue
            field = var[len(env_prefix_of(cls)) :].lower()
            if field not in cls.model_fields:
                problems.append(f"{name}: {var} is not a setting: {cls.__name__} has no field {field!r}")
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
        ports = [c for _, c in published_ports(svc)]
        if ports and settings.port != ports[0]:
            problems.append(f"{name}: listens on port {settings.port}, publishes {ports[0]}")
    return problems


def listen_port(compose: dict, name: str) -> int | None:
    if name in INFRA_PORTS:
        return INFRA_PORTS[name]
    if name in HTTP_SERVICES:
        svc = services_of(compose).get(name, {})
        env = container_env(svc)
        prefix = env_prefix_of(HTTP_SERVICES[name])
        return int(env.get(f"{prefix}PORT") or default_port(HTTP_SERVICES[name]))
    return None


_URL = re.compile(r"^(?P<scheme>[a-z][a-z0-9+]*)://(?:[^@/]*@)?(?P<host>[^:/]+)(?::(?P<port>\d+))?")


def check_urls(compose: dict) -> list[str]:
    """Internal URLs name a service on the port it listens on; public URLs a port published
    on the host by the right service."""
    problems = []
    services = services_of(compose)
    host_ports = {h: n for n, s in services.items() for h, _ in published_ports(s) if h}
    for name, svc in services.items():
        for var, value in container_env(svc).items():
            m = _URL.match(value)
            if not m or not m["port"]:
                continue
            host, port = m["host"], int(m["port"])
            if var in PUBLIC_URL_VARS:
                owner = host_ports.get(port)
                if host not in LOCAL_HOSTS:
                    problems.append(f"{name}: {var}={value} should be a URL the browser reaches")
                elif owner != PUBLIC_URL_VARS[var]:
                    problems.append(
                        f"{name}: {var}={value}: host port {port} is published by {owner}, "
                        f"not {PUBLIC_URL_VARS[var]}"
                    )
                continue
            if host in LOCAL_HOSTS:
                problems.append(f"{name}: {var}={value}: inside a container, {host} is the container itself")
                continue
            if host not in services:
                problems.append(f"{name}: {var}={value}: no service named {host!r}")
                continue
            expected = INTERNAL_URL_VARS.get(var)
            if expected and host != expected:
                problems.append(f"{name}: {var}={value} should point at {expected!r}")
            wanted = listen_port(compose, host)
            if wanted is not None and port != wanted:
                problems.append(f"{name}: {var}={value}: {host} listens on {wanted}")
    return problems


def check_gpu_worker(compose: dict) -> list[str]:
    svc = services_of(compose).get("embedder-worker") or {}
    deploy = svc.get("deploy") or {}
    problems = []
    replicas = str(deploy.get("replicas", ""))
    m = re.fullmatch(r"\d+|\$\{EMBED_WORKERS:-(\d+)\}", replicas)
    if not m or int(m.group(1) or replicas) < 1:
        problems.append(
            f"embedder-worker: deploy.replicas {replicas!r} is not a count or ${{EMBED_WORKERS:-N}}"
        )
    devices = ((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or []
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or [])]
    if not gpus:
        problems.append("embedder-worker: no NVIDIA GPU device reservation")
    elif gpus[0].get("count") != 1:
        problems.append(f"embedder-worker: reserves {gpus[0].get('count')!r} GPUs per replica, expected 1")
    return problems


def check_depends_on(compose: dict) -> list[str]:
    problems = []
    services = services_of(compose)
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        for dep, spec in depends_on(svc).items():
            condition = (spec or {}).get("condition")
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep!r}")
            if condition not in conditions:
                problems.append(f"{name}: depends on {dep!r} without a condition")
            elif condition == "service_healthy" and not (services.get(dep) or {}).get("healthcheck"):
                problems.append(f"{name}: waits for {dep!r} to be healthy, but it has no health check")
            elif condition == "service_completed_successfully" and (services.get(dep) or {}).get(
                "restart", "no"
            ) not in ("no", False):
                problems.append(f"{name}: waits for {dep!r} to complete, but {dep} restarts")

    def require(name: str, dep: str, condition: str) -> None:
        got = (depends_on(services.get(name) or {}).get(dep) or {}).get("condition")
        if got != condition:
            problems.append(f"{name}: must depend on {dep} with {condition} (has {got})")

    require("migrate", "postgis", "service_healthy")
    for name in DB_SERVICES:
        require(name, "postgis", "service_healthy")
        require(name, "redis", "service_healthy")
        require(name, "migrate", "service_completed_successfully")
    require("search-api", "embedder", "service_healthy")
    require("web", "search-api", "service_healthy")
    for name, svc in services.items():
        if name != "migrate" and not svc.get("healthcheck"):
            problems.append(f"{name}: no health check")
    return problems


def check_migrate(compose: dict) -> list[str]:
    svc = services_of(compose).get("migrate") or {}
    problems = []
    if argv(svc.get("command")) != ["python", "-m", "cliprs.db.migrate"]:
        problems.append(f"migrate: command is {svc.get('command')!r}, expected python -m cliprs.db.migrate")
    if svc.get("restart") not in ("no", False):
        problems.append(f'migrate: restart is {svc.get("restart")!r}; a one-shot job needs "no"')
    return problems


def _option(args: list[str], *names: str) -> str | None:
    for i, a in enumerate(args):
        if a in names and i + 1 < len(args):
            return args[i + 1]
        for n in names:
            if n.startswith("--") and a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def check_workers(
    compose: dict, tasks_of: Callable[[str], set[str]] = celery_tasks_of, root: Path = ROOT
) -> list[str]:
    """Each worker runs the right Celery app on the right queue, its app's tasks are routed to
    that queue, every queue has a consumer, and the health check pings this very worker."""
    problems = []
    services = services_of(compose)
    consumed = set()
    for name, (module, queue) in WORKERS.items():
        svc = services.get(name)
        if svc is None:
            continue
        args = argv(svc.get("command"))
        app, q, node = (
            _option(args, "-A", "--app"),
            _option(args, "-Q", "--queues"),
            _option(args, "-n", "--hostname"),
        )
        if app != module or "worker" not in args:
            problems.append(f"{name}: command {args} does not run `celery -A {module} worker`")
        if q != queue:
            problems.append(f"{name}: consumes queue {q!r}, expected {queue!r}")
        consumed.update((q or "").split(","))
        if _option(args, "--pool", "-P") != "solo":
            problems.append(f"{name}: not on the solo pool (one task per process, killed with it)")
        for task in sorted(tasks_of(module)):
            routed = QUEUE_OF.get(task)
            if routed is None:
                problems.append(f"{name}: task {task!r} of {module} has no queue in cliprs.queue.QUEUE_OF")
            elif routed != q:
                problems.append(
                    f"{name}: task {task!r} is routed to {routed!r} but the worker consumes {q!r}"
                )
        package_dir = PACKAGE_DIR[module.split(".")[0]]
        build = svc.get("build") or {}
        dockerfile = (
            DEPLOY_DIR / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
        ).resolve()
        if dockerfile != (root / package_dir / "Dockerfile").resolve():
            problems.append(f"{name}: runs {module} but builds {dockerfile}")
        health = healthcheck_text(svc)
        if f"-A {module} inspect ping" not in health:
            problems.append(f"{name}: health check does not ping {module}'s workers")
        prefix = (node or "").split("@")[0]
        if not node or not node.endswith("@%h") or f"-d {prefix}@$$HOSTNAME" not in health:
            problems.append(
                f"{name}: health check must ping this worker: -n {prefix or 'NAME'}@%h in the command "
                f"and -d {prefix or 'NAME'}@$$HOSTNAME in the check ($$ so the container expands it)"
            )
    missing = set(QUEUE_OF.values()) - consumed
    if missing:
        problems.append(f"no worker consumes the queues {sorted(missing)}")
    return problems


def check_mapbox_token(compose: dict) -> list[str]:
    """The token is only ever an environment reference; the tile source keeps ${MAPBOX_TOKEN}
    for the tiler to expand at fetch time, and the processes that fetch get the variable."""
    problems = []
    for path, value in _strings(compose):
        if TOKEN_LIKE.search(value):
            problems.append(f"{path}: looks like a literal Mapbox token")
        for m in re.finditer(r"access_token=([^&\"'\s]*)", value):
            if m.group(1) != "$" + MAPBOX_REF:
                problems.append(f"{path}: access_token={m.group(1)!r}, expected $${{MAPBOX_TOKEN}}")
    for name, svc in services_of(compose).items():
        env = environment(svc)
        for var, value in env.items():
            if "MAPBOX_TOKEN" in var and not re.fullmatch(r"\$\{MAPBOX_TOKEN(:?-)?\}", value):
                problems.append(f"{name}: {var} must be ${{MAPBOX_TOKEN:-}}, not {value!r}")
        raw = env.get("CLIPRS_TILE_SOURCES")
        if raw is None:
            continue
        if "$" + MAPBOX_REF not in raw:
            problems.append(f"{name}: CLIPRS_TILE_SOURCES lacks the escaped $${{MAPBOX_TOKEN}}")
        try:
            sources = json.loads(interpolate(raw, {"MAPBOX_TOKEN": "pk.from-the-host"}))
        except json.JSONDecodeError as exc:
            problems.append(f"{name}: CLIPRS_TILE_SOURCES is not JSON after interpolation: {exc}")
            continue
        mapbox = sources.get("mapbox", "")
        if "api.mapbox.com" not in mapbox or f"access_token={MAPBOX_REF}" not in mapbox:
            problems.append(f"{name}: the mapbox source {mapbox!r} does not keep access_token={MAPBOX_REF}")
        if name in ("tiler", "tiler-worker"):
            for ref in set(re.findall(r"\$\{(\w+)\}", json.dumps(sources))):
                if ref not in env:
                    problems.append(f"{name}: fetches from a source using ${{{ref}}} but has no {ref}")
    return problems


def check_volumes(compose: dict, deploy_dir: Path = DEPLOY_DIR) -> list[str]:
    problems = []
    services = services_of(compose)
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for target, source in volume_mounts(svc).items():
            if not source.startswith((".", "/", "~")) and source not in declared:
                problems.append(f"{name}: volume {source!r} (at {target}) is not declared")
    for name in DATA_SERVICES:
        svc = services.get(name) or {}
        data_dir = container_env(svc).get("CLIPRS_DATA_DIR")
        if volume_mounts(svc).get("/data") != "data" or data_dir != "/data":
            problems.append(
                f"{name}: needs the `data` volume at /data and CLIPRS_DATA_DIR=/data (has {data_dir})"
            )
    for name in MODEL_SERVICES:
        svc = services.get(name) or {}
        mounts = volume_mounts(svc)
        cache = next((t for t, s in mounts.items() if s == "hf-cache"), None)
        hf_home = container_env(svc).get("HF_HOME", "")
        if cache is None or not hf_home.startswith(cache):
            problems.append(f"{name}: HF_HOME={hf_home!r} is not on the hf-cache volume ({cache})")
    postgis = services.get("postgis") or {}
    init = {t: s for t, s in volume_mounts(postgis).items()}.get("/docker-entrypoint-initdb.d")
    if init is None:
        problems.append("postgis: deploy/postgis/init is not mounted at /docker-entrypoint-initdb.d")
    else:
        sql = " ".join(p.read_text() for p in sorted((deploy_dir / init).glob("*.sql")))
        if not re.search(r"create\s+extension\s+if\s+not\s+exists\s+postgis\b", sql, re.I):
            problems.append(f"postgis: no init script in {init} creates the postgis extension")
    if postgis.get("image") != "postgis/postgis:15-3.4":
        problems.append(f"postgis: image {postgis.get('image')!r}")
    db_url = environment(services.get("migrate") or {}).get("CLIPRS_DATABASE_URL", "")
    pg_env = environment(postgis)
    want = f"postgresql://{pg_env.get('POSTGRES_USER')}:{pg_env.get('POSTGRES_PASSWORD')}@postgis:5432/{pg_env.get('POSTGRES_DB')}"
    if db_url != want:
        problems.append(f"CLIPRS_DATABASE_URL {db_url!r} does not match the postgis credentials ({want})")
    return problems


# --------------------------------------------------------------------------------------------
# Checks on the Dockerfiles
# --------------------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
        current = ""
    return lines


def dockerfile_problems(
    text: str,
    service_dir: str,
    *,
    cliprs: bool,
    port: int | None,
    torch_version: str,
    gpu: bool = False,
) -> list[str]:
    problems = []
    ins = dockerfile_instructions(text)
    froms = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    if not froms:
        return [f"{service_dir}: no FROM"]
    final = ins[froms[-1] :]
    if final[0][1].split()[0] != "python:3.11-slim":
        problems.append(f"{service_dir}: final stage is {final[0][1]!r}, not python:3.11-slim")

    def index_of(pred: Callable[[str, str], bool]) -> int | None:
        return next((i for i, (w, a) in enumerate(final) if pred(w, a)), None)

    own = re.compile(rf"^(--\S+\s+)*{re.escape(service_dir)}/?\s")
    if index_of(lambda w, a: w == "COPY" and own.match(a)) is None:
        problems.append(f"{service_dir}: does not COPY {service_dir}")
    install_own = index_of(lambda w, a: w == "RUN" and "pip install" in a and f"./{service_dir}" in a)
    if install_own is None:
        problems.append(f"{service_dir}: does not pip install ./{service_dir}")
    if cliprs:
        if index_of(lambda w, a: w == "COPY" and re.match(r"^libs/cliprs/?\s", a)) is None:
            problems.append(f"{service_dir}: does not COPY libs/cliprs")
        install_lib = index_of(lambda w, a: w == "RUN" and "pip install" in a and "./libs/cliprs" in a)
        if install_lib is None:
            problems.append(f"{service_dir}: does not pip install ./libs/cliprs")
        torch = index_of(lambda w, a: w == "RUN" and "pip install" in a and "torch" in a)
        if torch is None or f"torch=={torch_version}" not in final[torch][1]:
            problems.append(
                f"{service_dir}: does not install torch=={torch_version} (the pin of libs/cliprs)"
            )
        else:
            run = final[torch][1]
            if install_lib is not None and torch >= install_lib:
                problems.append(f"{service_dir}: torch must be installed BEFORE ./libs/cliprs")
            if gpu:
                arg = re.search(r"TORCH_INDEX_URL=(\S+)", " ".join(a for w, a in final if w == "ARG"))
                if not re.search(r"--index-url\s+\"?\$\{?TORCH_INDEX_URL\}?", run):
                    problems.append(f"{service_dir}: torch is not installed from $TORCH_INDEX_URL")
                if not arg or not re.search(r"download\.pytorch\.org/whl/cu12\d", arg.group(1)):
                    problems.append(f"{service_dir}: ARG TORCH_INDEX_URL has no CUDA 12 index default")
            elif "--index-url https://download.pytorch.org/whl/cpu" not in run:
                problems.append(f"{service_dir}: torch is not installed from the PyTorch CPU index")
    users = [a for w, a in final if w == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"{service_dir}: runs as root (no non-root USER)")
    env_text = " ".join(a for w, a in final if w == "ENV")
    if not re.search(r"\bPYTHONUNBUFFERED[= ]\"?1", env_text):
        problems.append(f"{service_dir}: PYTHONUNBUFFERED=1 not set")
    if port is not None:
        exposed = {int(p.split("/")[0]) for w, a in final if w == "EXPOSE" for p in a.split()}
        if port not in exposed:
            problems.append(f"{service_dir}: EXPOSE {sorted(exposed)} lacks {port}")
    if not any(w == "CMD" for w, _ in final):
        problems.append(f"{service_dir}: no CMD")
    return problems


def web_dockerfile_problems(text: str) -> list[str]:
    """The web image vendors MapLibre in a node stage, as services/web/build.sh does."""
    problems = []
    ins = dockerfile_instructions(text)
    stage = next((a for w, a in ins if w == "FROM" and a.startswith("node:20-slim")), None)
    if stage is None or " as " not in stage.lower():
        return ["services/web: no named node:20-slim stage"]
    name = stage.split()[-1]
    runs = " ".join(a for w, a in ins if w == "RUN")
    if "npm ci" not in runs:
        problems.append("services/web: the node stage does not run npm ci")
    for f in ("maplibre-gl.js", "maplibre-gl.css", "LICENSE.txt"):
        if f not in runs:
            problems.append(f"services/web: {f} is not copied out of node_modules/maplibre-gl")
    copy_from = [a for w, a in ins if w == "COPY" and a.startswith(f"--from={name}")]
    if not any(a.rstrip("/").endswith("cliprs_web/static/vendor") for a in copy_from):
        problems.append("services/web: the vendored bundle is not copied into cliprs_web/static/vendor")
    return problems


def check_dockerfiles(compose: dict, root: Path = ROOT) -> list[str]:
    problems = []
    pin = torch_pin(root)
    for service_dir in sorted(set(SERVICE_DIR.values())):
        path = root / service_dir / "Dockerfile"
        if not path.is_file():
            problems.append(f"{service_dir}: no Dockerfile")
            continue
        http = [n for n, d in SERVICE_DIR.items() if d == service_dir and n in HTTP_SERVICES]
        port = default_port(HTTP_SERVICES[http[0]]) if http else None
        problems += dockerfile_problems(
            path.read_text(),
            service_dir,
            cliprs=needs_cliprs(service_dir, root),
            port=port,
            torch_version=pin,
            gpu=service_dir == SERVICE_DIR["embedder-worker"],
        )
    problems += web_dockerfile_problems((root / "services/web/Dockerfile").read_text())
    return problems


def check_dockerignore(root: Path = ROOT) -> list[str]:
    path = root / ".dockerignore"
    if not path.is_file():
        return [".dockerignore is missing (the build context is the whole repository)"]
    entries = {line.strip().removeprefix("**/").rstrip("/") for line in path.read_text().splitlines()}
    wanted = {".venv", "var", ".run", ".cache", "node_modules", ".git", "__pycache__"}
    return [f".dockerignore does not exclude {e}" for e in sorted(wanted - entries)]


ALL_CHECKS: list[Callable[[dict], list[str]]] = [
    check_services_exist,
    check_builds,
    check_http_ports,
    check_env_names,
    check_settings_load,
    check_urls,
    check_gpu_worker,
    check_depends_on,
    check_migrate,
    check_workers,
    check_mapbox_token,
    check_volumes,
    check_dockerfiles,
]


# --------------------------------------------------------------------------------------------
# Tests: the real files
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_compose_is_consistent(compose: dict, check: Callable[[dict], list[str]]) -> None:
    assert check(compose) == []


def test_dockerignore() -> None:
    assert check_dockerignore() == []


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
    model = load_service_settings(services["embedder-worker"], "embedder-worker")[ModelSettings]
    assert model.model == "flax-community/clip-rsicd-v2"
    assert str(model.fallback_dir).startswith("/cache/")


def test_interpolate_follows_compose() -> None:
    assert interpolate("a=$${MAPBOX_TOKEN}") == "a=${MAPBOX_TOKEN}"
    assert interpolate("${X:-d}") == "d"
    assert interpolate("${X:-d}", {"X": ""}) == "d"
    assert interpolate("${X-d}", {"X": ""}) == ""
    assert interpolate("${X}/$X/$$X", {"X": "v"}) == "v/v/$X"


def test_celery_apps_route_tasks_to_their_queues() -> None:
    """The real Celery apps: every registered task belongs to a queue of QUEUE_OF."""
    for module, queue in WORKERS.values():
        tasks = celery_tasks_of(module)
        assert tasks, f"{module} registers no task"
        assert {QUEUE_OF[t] for t in tasks} == {queue}


# --------------------------------------------------------------------------------------------
# Tests: the checks catch broken copies
# --------------------------------------------------------------------------------------------


TEXT_TYPOS = [
    ('"8001:8001"', '"8001:8010"', check_http_ports, "tiler: publishes container ports"),
    ("127.0.0.1:8000/healthz", "127.0.0.1:8080/healthz", check_http_ports, "search-api: health check probes"),
    ("access_token=$${MAPBOX_TOKEN}", "access_token=${MAPBOX_TOKEN}", check_mapbox_token, "$${MAPBOX_TOKEN}"),
    ("indexer@$$HOSTNAME", "indexer@$HOSTNAME", check_workers, "indexer: health check must ping this worker"),
    ("SEARCH_EMBEDDER_URL:", "SEARCH_EMBEDER_URL:", check_env_names, "SEARCH_EMBEDER_URL is not a setting"),
    ("condition: service_completed_successfully", "condition: service_started", check_depends_on, "migrate"),
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


def _set(name: str, key: str, value: Any) -> Callable[[dict], None]:
    def mutate(c: dict) -> None:
        if value is None:
            _svc(c, name).pop(key, None)
        else:
            _svc(c, name)[key] = value

    return mutate


def _replace_in_command(name: str, old: str, new: str) -> Callable[[dict], None]:
    def mutate(c: dict) -> None:
        _svc(c, name)["command"] = [new if a == old else a for a in _svc(c, name)["command"]]

    return mutate


def _replace_in_health(name: str, old: str, new: str) -> Callable[[dict], None]:
    def mutate(c: dict) -> None:
        hc = _svc(c, name)["healthcheck"]
        hc["test"] = [t.replace(old, new) for t in hc["test"]]

    return mutate


def _drop_gpu(c: dict) -> None:
    _svc(c, "embedder-worker")["deploy"]["resources"]["reservations"]["devices"] = []


BROKEN = [
    ("missing service", lambda c: c["services"].pop("indexer"), check_services_exist, "'indexer' is missing"),
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
        "embedder via localhost",
        _set_env("search-api", "SEARCH_EMBEDDER_URL", "http://localhost:8002"),
        check_urls,
        "the container itself",
    ),
    (
        "embedder wrong port",
        _set_env("search-api", "SEARCH_EMBEDDER_URL", "http://embedder:8003"),
        check_urls,
        "embedder listens on 8002",
    ),
    (
        "public url to wrong service",
        _set_env("web", "WEB_TILER_URL", "http://localhost:8000"),
        check_urls,
        "published by search-api",
    ),
    (
        "unknown host",
        _set_env("web", "WEB_SEARCH_API_INTERNAL_URL", "http://search:8000"),
        check_urls,
        "no service",
    ),
    ("no gpu", _drop_gpu, check_gpu_worker, "no NVIDIA GPU"),
    (
        "no replicas",
        lambda c: _svc(c, "embedder-worker")["deploy"].pop("replicas"),
        check_gpu_worker,
        "replicas",
    ),
    ("list depends_on", _set("web", "depends_on", ["search-api"]), check_depends_on, "without a condition"),
    (
        "unknown dependency",
        _set("web", "depends_on", {"search": {"condition": "service_healthy"}}),
        check_depends_on,
        "unknown service 'search'",
    ),
    ("no healthcheck", _set("embedder", "healthcheck", None), check_depends_on, "has no health check"),
    ("migrate restarts", _set("migrate", "restart", "always"), check_migrate, "one-shot"),
    (
        "wrong queue",
        _replace_in_command("tiler-worker", "tiles", "embed"),
        check_workers,
        "consumes queue 'embed'",
    ),
    (
        "wrong app",
        _replace_in_command("indexer", "cliprs_indexer.tasks", "cliprs_tiler.tasks"),
        check_workers,
        "does not run `celery -A cliprs_indexer.tasks worker`",
    ),
    (
        "host-expanded HOSTNAME",
        _replace_in_health("indexer", "$$HOSTNAME", "$HOSTNAME"),
        check_workers,
        "health check must ping this worker",
    ),
    (
        "literal token",
        _set_env("web", "WEB_MAPBOX_TOKEN", "pk.eyJ1IjoiZXhhbXBsZSIsImEiOiJjbGZ4In0.abcdefghijk"),
        check_mapbox_token,
        "literal Mapbox token",
    ),
    (
        "worker without token",
        _set_env("tiler-worker", "MAPBOX_TOKEN", None),
        check_mapbox_token,
        "has no MAPBOX_TOKEN",
    ),
    (
        "no data volume",
        lambda c: _svc(c, "search-api").update(volumes=[]),
        check_volumes,
        "search-api: needs the `data` volume",
    ),
    (
        "build context",
        lambda c: _svc(c, "web")["build"].update(context="."),
        check_builds,
        "not the repo root",
    ),
    (
        "wrong Dockerfile",
        lambda c: _svc(c, "tiler-worker").update(
            build={"context": "..", "dockerfile": "services/embedder/Dockerfile"}
        ),
        check_builds,
        "expected services/tiler/Dockerfile",
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


def _dockerfile_check(text: str, service_dir: str = "services/tiler", **kw: Any) -> list[str]:
    args = {"cliprs": True, "port": 8001, "torch_version": torch_pin()} | kw
    return dockerfile_problems(text, service_dir, **args)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("COPY libs/cliprs ./libs/cliprs\n", "", "does not COPY libs/cliprs"),
        ("COPY services/tiler ./services/tiler\n", "", "does not COPY services/tiler"),
        ("./libs/cliprs ./services/tiler", "./services/tiler", "does not pip install ./libs/cliprs"),
        ('"torch==2.13.0"', '"torch==2.12.0"', "does not install torch=="),
        ("--index-url https://download.pytorch.org/whl/cpu ", "", "PyTorch CPU index"),
        ("USER cliprs\n", "", "runs as root"),
        ("EXPOSE 8001\n", "EXPOSE 8000\n", "lacks 8001"),
        ("FROM python:3.11-slim", "FROM python:3.12-slim", "not python:3.11-slim"),
    ],
)
def test_checks_catch_broken_dockerfile(old: str, new: str, expected: str) -> None:
    text = (ROOT / "services/tiler/Dockerfile").read_text()
    assert _dockerfile_check(text) == []
    assert old in text
    problems = _dockerfile_check(text.replace(old, new))
    assert any(expected in p for p in problems), problems


def test_torch_after_cliprs_is_caught() -> None:
    text = (ROOT / "services/tiler/Dockerfile").read_text()
    torch_line = next(line for line in text.splitlines() if line.startswith("RUN") and "torch==" in line)
    moved = text.replace(torch_line + "\n", "") + torch_line + "\n"
    assert any("BEFORE ./libs/cliprs" in p for p in _dockerfile_check(moved))


def test_gpu_dockerfile_needs_cuda_index() -> None:
    text = (ROOT / "services/embedder/Dockerfile").read_text()
    kw = {"port": 8002, "gpu": True}
    assert _dockerfile_check(text, "services/embedder", **kw) == []
    cpu_default = re.sub(r"(ARG TORCH_INDEX_URL=)\S+", r"\1https://download.pytorch.org/whl/cpu", text)
    assert any("CUDA 12" in p for p in _dockerfile_check(cpu_default, "services/embedder", **kw))


def test_web_dockerfile_without_vendor_is_caught() -> None:
    text = (ROOT / "services/web/Dockerfile").read_text()
    assert web_dockerfile_problems(text) == []
    broken = "\n".join(line for line in text.splitlines() if not line.startswith("COPY --from="))
    assert any("static/vendor" in p for p in web_dockerfile_problems(broken))
