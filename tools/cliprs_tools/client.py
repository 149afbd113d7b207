"""The platform from the shell, over the REST API only: search, projects, labels, refine, detect
and export.

    python -m cliprs_tools.client --api http://127.0.0.1:8000 search "boats near a pier" -k 5
    python -m cliprs_tools.client projects create --name Piers --query "boats near a pier" --area-ids 1,2
    python -m cliprs_tools.client labels add --project 3 --window 123456 [--negative]
    python -m cliprs_tools.client refine --project 3
    python -m cliprs_tools.client detect --project 3 --threshold 0.5 --thresholds 0.3,0.5,0.7
    python -m cliprs_tools.client export --run 7 --format gpkg --out piers.gpkg

``--api`` (or ``CLIPRS_API``) is the search-api's base URL; ``--json`` prints the API's answers as
they are, for scripts. A refused request prints the API's message on one line and exits with
status 2; an unreachable API or a failed run exits with status 1.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    CliApp,
    CliPositionalArg,
    CliSubCommand,
    SettingsError,
    get_subcommand,
)

from cliprs_tools.cli import cli_config, describe

PROG = "python -m cliprs_tools.client"


class ApiError(Exception):
    """The API refused the request (4xx): ``message`` says how to fix it."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{message} (HTTP {status})")
        self.status = status


class Unreachable(Exception):
    """The API could not be reached, answered 5xx, or a run failed."""


class Api:
    """A thin client of the search-api's REST endpoints."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        api_key: str | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(
            base_url=self.base_url, timeout=timeout_s, transport=transport, headers=headers
        )

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of one request; `ApiError` for 4xx, `Unreachable` otherwise."""
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unreachable(
                f"cannot reach the search-api at {self.base_url} ({type(exc).__name__}: {exc})"
            ) from None
        self._check(resp)
        return resp.json()

    def download(self, path: str, out: Path, params: dict | None = None) -> int:
        """Stream ``path`` into ``out`` (written to a temporary name, renamed when complete);
        the bytes written."""
        tmp = out.with_name(out.name + ".part")
        written = 0
        try:
            with self.http.stream("GET", path, params=params) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._check(resp)
                with tmp.open("wb") as f:
                    for chunk in resp.iter_bytes():
                        f.write(chunk)
                        written += len(chunk)
        except httpx.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            raise Unreachable(
                f"the download from {self.base_url}{path} failed ({type(exc).__name__}: {exc})"
            ) from None
        tmp.replace(out)
        return written

    @staticmethod
    def _check(resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:300] or resp.reason_phrase
        if resp.status_code >= 500:
            raise Unreachable(f"the search-api answered {resp.status_code}: {message}")
        raise ApiError(resp.status_code, message)


class Out:
    """Where answers go: a human summary, or (``--json``) the API's JSON as it is."""

    def __init__(self, as_json: bool):
        self.as_json = as_json

    def show(self, body: Any, human: str) -> None:
        print(json.dumps(body, indent=2) if self.as_json else human)


# ----------------------------------------------------------------------------- formatting


def format_hits(body: dict) -> str:
    lines = [
        f"{body.get('count', 0)} hits (index version {body.get('index_version')}, {body.get('took_ms')} ms)"
    ]
    for f in body.get("features", []):
        p = f["properties"]
        lon, lat = p["center"]
        place = f"  {p['address']}" if p.get("address") else ""
        lines.append(
            f"{p['rank']:>4}  {p['score']:.4f}  window {p['window_id']}  z{p['z']}  {lat:.6f},{lon:.6f}{place}"
        )
    if body.get("warning"):
        lines.append(f"note: {body['warning']}")
    if body.get("next_cursor"):
        lines.append(f"more: --cursor {body['next_cursor']}")
    return "\n".join(lines)


def format_project(p: dict) -> str:
    labels = p["labels"]
    head = (
        f"project {p['id']}: {p['name']}  query={p['query']!r}  areas={','.join(map(str, p['area_ids'])) or '-'}  "
        f"labels +{labels['positive']} -{labels['negative']}"
    )
    runs = [
        f"  run {r['id']}: {r['state']}  threshold {r['threshold']}  {r['hits']} hits of {r['windows_scored']} windows"
        for r in p.get("runs") or []
    ]
    return "\n".join([head, *runs])


def format_labels(labels: list[dict]) -> str:
    if not labels:
        return "no labels"
    return "\n".join(
        f"{'+' if x['positive'] else '-'} window {x['window_id']}  z{x['z']}  "
        f"{x['center'][1]:.6f},{x['center'][0]:.6f}  {x['created_at']}{'  by ' + x['created_by'] if x.get('created_by') else ''}"
        for x in labels
    )


def format_run(run: dict) -> str:
    line = f"run {run['id']}: {run['state']}  threshold {run['threshold']}  {run['hits']} hits of {run['windows_scored']} windows"
    est = run.get("estimate") or {}
    if est.get("precision") is not None or est.get("recall") is not None:
        line += (
            f"\nheld-out estimate: precision {_num(est.get('precision'))}  recall {_num(est.get('recall'))}  "
            f"({est.get('held_out_positive', 0)} positive, {est.get('held_out_negative', 0)} negative labels held out)"
        )
    if run.get("error"):
        line += f"\nerror: {run['error']}"
    return line


def format_counts(counts: dict) -> str:
    return "\n".join(f"  score >= {c['threshold']:.3f}: {c['count']} hits" for c in counts.get("counts", []))


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# ----------------------------------------------------------------------------- commands


class Search(BaseModel):
    """Text search: the windows that best match a description."""

    q: CliPositionalArg[str] = Field(description="what to look for, e.g. 'boats near a pier'")
    k: int = Field(10, description="results per page")
    area_id: int | None = Field(None, description="only windows of this area")
    zoom: list[int] | None = Field(None, description="only these zoom levels (e.g. 16,17)")
    min_score: float | None = Field(None, description="minimum cosine similarity")
    cursor: str | None = Field(None, description="the next page of a previous search")

    def run(self, api: Api, out: Out) -> None:
        body = {"q": self.q, "k": self.k, "area_id": self.area_id, "zoom": self.zoom, "cursor": self.cursor}
        if self.min_score is not None:
            body["min_score"] = self.min_score
        answer = api.call("POST", "/v1/search", json={k: v for k, v in body.items() if v is not None})
        out.show(answer, format_hits(answer))


class _Group(BaseModel):
    """Commands under one name (``projects``, ``labels``): its `run` runs the one chosen."""

    def run(self, api: Api, out: Out) -> None:
        get_subcommand(self).run(api, out)


class ProjectCreate(BaseModel):
    """Create a project over areas."""

    name: str = Field(description="the project's name")
    query: str | None = Field(None, description="what it looks for, in words")
    area_ids: list[int] = Field(default_factory=list, description="its areas (e.g. 1,2)")

    def run(self, api: Api, out: Out) -> None:
        body = {"name": self.name, "query": self.query, "area_ids": self.area_ids}
        p = api.call("POST", "/v1/projects", json=body)
        out.show(p, format_project(p))


class ProjectList(BaseModel):
    """Every project."""

    def run(self, api: Api, out: Out) -> None:
        ps = api.call("GET", "/v1/projects")
        out.show(ps, "\n".join(format_project(p) for p in ps) or "no projects")


class ProjectShow(BaseModel):
    """One project with its runs."""

    id: CliPositionalArg[int] = Field(description="project id")

    def run(self, api: Api, out: Out) -> None:
        p = api.call("GET", f"/v1/projects/{self.id}")
        out.show(p, format_project(p))


class ProjectUpdate(BaseModel):
    """Rename a project, change its query (--clear-query removes it) or replace its areas."""

    id: CliPositionalArg[int] = Field(description="project id")
    name: str | None = None
    query: str | None = None
    clear_query: bool = Field(False, description="remove the project's query")
    area_ids: list[int] | None = Field(None, description="the new list of areas")

    def run(self, api: Api, out: Out) -> None:
        body: dict[str, Any] = {
            k: v for k, v in {"name": self.name, "query": self.query}.items() if v is not None
        }
        if self.clear_query:
            body["query"] = None
        if self.area_ids is not None:
            body["area_ids"] = self.area_ids
        p = api.call("PATCH", f"/v1/projects/{self.id}", json=body)
        out.show(p, format_project(p))


class ProjectDelete(BaseModel):
    """Delete a project with its labels and runs."""

    id: CliPositionalArg[int] = Field(description="project id")

    def run(self, api: Api, out: Out) -> None:
        p = api.call("DELETE", f"/v1/projects/{self.id}")
        out.show(p, f"deleted project {p['id']} ({p['name']})")


class Projects(_Group):
    """Create, list, show, update or delete projects."""

    create: CliSubCommand[ProjectCreate]
    list: CliSubCommand[ProjectList]
    show: CliSubCommand[ProjectShow]
    update: CliSubCommand[ProjectUpdate]
    delete: CliSubCommand[ProjectDelete]


class LabelAdd(BaseModel):
    """Label a window positive (default) or negative; labelling it again replaces the label."""

    project: int = Field(description="project id")
    window: int = Field(description="window id (a search hit's window_id)")
    negative: bool = Field(False, description="a negative example (not what the project looks for)")
    by: str | None = Field(None, description="who labels it")

    def run(self, api: Api, out: Out) -> None:
        body = {"window_id": self.window, "positive": not self.negative, "by": self.by}
        label = api.call("POST", f"/v1/projects/{self.project}/labels", json=body)
        out.show(label, f"{'positive' if label['positive'] else 'negative'}: window {label['window_id']}")


class LabelRemove(BaseModel):
    """Remove a window's label."""

    project: int = Field(description="project id")
    window: int = Field(description="window id")

    def run(self, api: Api, out: Out) -> None:
        label = api.call("DELETE", f"/v1/projects/{self.project}/labels/{self.window}")
        out.show(label, f"removed the label of window {label['window_id']}")


class LabelList(BaseModel):
    """A project's labels."""

    project: int = Field(description="project id")

    def run(self, api: Api, out: Out) -> None:
        labels = api.call("GET", f"/v1/projects/{self.project}/labels", params={"footprint": "false"})
        out.show(labels, format_labels(labels))


class Labels(_Group):
    """Add, remove or list a project's labels."""

    add: CliSubCommand[LabelAdd]
    remove: CliSubCommand[LabelRemove]
    list: CliSubCommand[LabelList]


class Refine(BaseModel):
    """Search the project's areas with a query built from its text and labels."""

    project: int = Field(description="project id")
    k: int = Field(10, description="results per page")
    q: str | None = Field(None, description="text instead of the project's query")
    cursor: str | None = Field(None, description="the next page of a previous refine")

    def run(self, api: Api, out: Out) -> None:
        body = {k: v for k, v in {"k": self.k, "q": self.q, "cursor": self.cursor}.items() if v is not None}
        answer = api.call("POST", f"/v1/projects/{self.project}/refine", json=body)
        out.show(answer, format_hits(answer))


class Detect(BaseModel):
    """Train on the project's labels, score every window of its areas, and print the counts."""

    project: int = Field(description="project id")
    threshold: float | None = Field(None, description="the run's threshold (the API's default: 0.5)")
    thresholds: list[float] = Field(
        default_factory=lambda: [0.3, 0.5, 0.7, 0.9], description="print the hit counts at these thresholds"
    )
    follow: bool = Field(True, description="wait for the run to finish (--no-follow: start it and return)")
    poll_s: float = Field(1.0, gt=0, description="seconds between polls")
    timeout_s: float = Field(1800.0, gt=0, description="give up waiting after this long")

    def run(self, api: Api, out: Out) -> None:
        body = {} if self.threshold is None else {"threshold": self.threshold}
        run = api.call("POST", f"/v1/projects/{self.project}/runs", json=body)
        if not out.as_json:
            print(f"started run {run['id']} ({run['state']})", file=sys.stderr)
        if not self.follow:
            out.show(run, format_run(run))
            return
        deadline = time.monotonic() + self.timeout_s
        state = run["state"]
        while run["state"] not in ("done", "failed"):
            if time.monotonic() > deadline:
                raise Unreachable(f"run {run['id']} is still {run['state']} after {self.timeout_s:.0f} s")
            time.sleep(self.poll_s)
            run = api.call("GET", f"/v1/runs/{run['id']}")
            if run["state"] != state and not out.as_json:
                print(f"run {run['id']}: {run['state']}", file=sys.stderr)
                state = run["state"]
        if run["state"] == "failed":
            out.show(run, format_run(run))
            raise Unreachable(f"run {run['id']} failed: {run.get('error')}")
        counts = api.call("GET", f"/v1/runs/{run['id']}/counts", params={"threshold": self.thresholds})
        out.show({"run": run, "counts": counts}, f"{format_run(run)}\n{format_counts(counts)}")


class Export(BaseModel):
    """Download a finished run's detections: GeoJSON, GeoPackage or CSV."""

    run: int = Field(description="run id")
    format: Literal["geojson", "gpkg", "csv"] = Field("geojson", description="the file format")
    rows: Literal["polygons", "windows"] = Field(
        "polygons", description="CSV only: one row per polygon (centroid lon/lat) or per hit window"
    )
    out: Path | None = Field(None, description="the file to write (default: run-<id>.<format>)")

    def run_export(self, api: Api, out: Out) -> None:
        target = self.out or Path(f"run-{self.run}.{self.format}")
        params = {"rows": self.rows} if self.format == "csv" else None
        size = api.download(f"/v1/runs/{self.run}/export.{self.format}", target, params)
        out.show({"run": self.run, "path": str(target), "bytes": size}, f"wrote {target} ({size} bytes)")


class ClientCli(BaseSettings):
    """CLIP-RS from the shell, over the REST API."""

    model_config = cli_config("CLIPRS_", PROG, cli_exit_on_error=False)

    api: str = Field("http://127.0.0.1:8000", description="the search-api's base URL (env CLIPRS_API)")
    json_output: bool = Field(False, alias="json", description="print the API's JSON answers as they are")
    timeout_s: float = Field(60.0, gt=0, description="seconds to wait for one request")
    # A key with the write scope for projects, labels and runs (`make up` prints an admin key).
    api_key: str | None = Field(
        None, description="API key sent as X-API-Key (env CLIPRS_API_KEY; never printed)"
    )

    search: CliSubCommand[Search] = Field(description="text search")
    projects: CliSubCommand[Projects] = Field(description="create, list, show, update, delete projects")
    labels: CliSubCommand[Labels] = Field(description="add, remove, list a project's labels")
    refine: CliSubCommand[Refine] = Field(description="search again with the project's text and labels")
    detect: CliSubCommand[Detect] = Field(description="start a detection run, follow it, print counts")
    export: CliSubCommand[Export] = Field(description="download a run's GeoJSON, GeoPackage or CSV")


def dispatch(cli: ClientCli, transport: httpx.BaseTransport | None = None) -> None:
    """Run the chosen command against ``cli.api``."""
    command = get_subcommand(cli)
    api = Api(cli.api, cli.timeout_s, transport, cli.api_key)
    out = Out(cli.json_output)
    try:
        if isinstance(command, Export):
            command.run_export(api, out)
        else:
            command.run(api, out)
    finally:
        api.close()


def main(argv: Sequence[str] | None = None, transport: httpx.BaseTransport | None = None) -> int:
    """0 on success; 2 when the request is refused or malformed; 1 when the API cannot be
    reached or a run failed (``transport`` lets tests route requests in-process)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli = CliApp.run(ClientCli, cli_args=args)
        dispatch(cli, transport)
    except ValidationError as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return 2
    except (ApiError, SettingsError) as exc:
        print(f"error: {str(exc).removeprefix('Error: ')}", file=sys.stderr)
        return 2
    except Unreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the export's file could not be written
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
