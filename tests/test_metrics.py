"""Operations, end to end on real processes: every HTTP service's ``/metrics`` and each Celery
worker's metrics server parse with the Prometheus client's parser, and the counters move after an
ingest and a search; JSON logs carry one request id from the search-api to the embedder and from
an area's creation to the workers that fetch and embed it; API keys never reach a log."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cliprs.tiles import BBox, tiles_for_bbox
from cliprs_testing.loopback import free_port
from tests.support.platform import finish_job

AREA_BBOX = [-75.66, 37.66, -75.62, 37.69]  # the e2e test's farmland and creek
AREA_ZOOMS = [13, 14]
# A source of this module's own: tiles are shared by (source, z, x, y) across the session's
# database, so under the e2e test's "test" source they would already be embedded (by another
# platform) and nothing would be fetched or embedded here.
SOURCE = "test-metrics"
WORKERS = ("tiler-worker", "embedder-worker", "indexer-worker")
SECRET = "cliprs_canary_secret_never_logged"


def scrape(url: str) -> dict[str, list]:
    """``/metrics`` parsed: sample name -> [(labels, value), ...]."""
    resp = httpx.get(url, timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain"), resp.text[:200]
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(metrics: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(v for lab, v in metrics.get(name, []) if all(lab.get(k) == want for k, want in labels.items()))


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def tile_folder(render_tiles, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_tiles(tmp_path_factory.mktemp("tiles"), tiles_for_bbox(BBox(*AREA_BBOX), AREA_ZOOMS))


@pytest.fixture(scope="module")
def stack(start_platform, tiny_model_dir: Path, tile_folder: Path) -> Iterator[dict]:
    metrics_base = free_port()
    env = {
        "CLIPRS_TILE_SOURCES": json.dumps({SOURCE: f"file://{tile_folder}/{{z}}/{{x}}/{{y}}.png"}),
        "CLIPRS_MAX_TILES_PER_AREA": "200",
        "CLIP_MODEL": str(tiny_model_dir),
        "CLIPRS_LOG_FORMAT": "json",
        # Every worker takes the first free port from here (three workers: base .. base+2 or so).
        "CLIPRS_METRICS_PORT": str(metrics_base),
        "CLIPRS_METRICS_HOST": "127.0.0.1",
    }
    with start_platform("metrics", env) as platform:
        platform["metrics_base"] = metrics_base
        yield platform


def worker_metrics(stack: dict) -> dict[str, str]:
    """service name -> metrics URL, for the workers that answer on the ports from the base."""
    found: dict[str, str] = {}
    for port in range(stack["metrics_base"], stack["metrics_base"] + 12):
        if not _answers(port):
            continue
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            info = scrape(url).get("cliprs_worker_info", [])
        except (httpx.HTTPError, AssertionError):
            continue
        for labels, _ in info:
            found[labels["service"]] = url
    return found


@pytest.fixture(scope="module")
def before(stack: dict) -> dict:
    """Every scrape before anything was ingested or searched."""
    from cliprs_testing.loopback import wait_until

    wait_until(lambda: set(worker_metrics(stack)) >= set(WORKERS), 60, "the workers' metrics servers")
    return {
        "api": scrape(f"{stack['api']}/metrics"),
        "workers": {name: scrape(url) for name, url in worker_metrics(stack).items()},
    }


@pytest.fixture(scope="module")
def ingested(stack: dict, before: dict) -> dict:
    resp = httpx.post(
        f"{stack['api']}/v1/areas",
        json={"name": "metrics", "bbox": AREA_BBOX, "zooms": AREA_ZOOMS, "source": SOURCE},
        headers={"X-Request-ID": "ingest-req-1", "Authorization": f"Bearer {SECRET}"},
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    assert resp.headers["x-request-id"] == "ingest-req-1"
    body = resp.json()
    return {"area": body["area"], "job": finish_job(stack, body["job"], timeout_s=240)}


@pytest.fixture(scope="module")
def searched(stack: dict, ingested: dict) -> httpx.Response:
    resp = httpx.get(
        f"{stack['api']}/v1/search",
        params={"q": "boats near a pier", "k": 5, "area_id": ingested["area"]["id"]},
        headers={"X-Request-ID": "search-req-1", "Authorization": f"Bearer {SECRET}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return resp


def test_worker_counters_move_after_an_ingest(stack: dict, before: dict, ingested: dict) -> None:
    job = ingested["job"]
    after = {name: scrape(url) for name, url in worker_metrics(stack).items()}
    tiler, embedder, indexer = (after[n] for n in WORKERS)
    was = before["workers"]
    assert (
        value(tiler, "cliprs_tiles_fetched_total") - value(was["tiler-worker"], "cliprs_tiles_fetched_total")
        == (job["tiles_fetched"])
    )
    assert value(tiler, "cliprs_tiles_failed_total") == value(
        was["tiler-worker"], "cliprs_tiles_failed_total"
    )
    assert value(tiler, "cliprs_tasks_total", task="tiler.fetch_area", state="success") >= 1
    embedded = value(embedder, "cliprs_windows_embedded_total") - value(
        was["embedder-worker"], "cliprs_windows_embedded_total"
    )
    assert embedded == job["windows_embedded"] > 0
    assert value(embedder, "cliprs_tiles_embedded_total") >= job["tiles_embedded"]
    assert value(embedder, "cliprs_embed_windows_per_second") > 0
    assert value(indexer, "cliprs_tasks_total", task="indexer.index_area", state="success") >= 1
    assert value(indexer, "cliprs_task_duration_seconds_count", task="indexer.index_area") >= 1
    # Queue lengths, read from the broker at scrape time (empty once the job is done).
    for worker in (tiler, embedder, indexer):
        assert {lab["queue"] for lab, _ in worker["cliprs_queue_length"]} == {"tiles", "embed", "index"}


def test_search_api_metrics_move_after_a_search(stack: dict, before: dict, ingested: dict, searched) -> None:
    after = scrape(f"{stack['api']}/metrics")
    route = {"service": "search-api", "method": "GET", "route": "/v1/search"}
    assert (
        value(after, "cliprs_http_requests_total", status="200", **route)
        == value(before["api"], "cliprs_http_requests_total", status="200", **route) + 1
    )
    assert value(after, "cliprs_http_request_duration_seconds_count", **route) >= 1
    assert value(after, "cliprs_http_requests_total", route="/v1/areas", method="POST", status="202") >= 1
    # The search's stages, as its timings_ms reported them.
    for stage in searched.json()["timings_ms"]:
        grew = value(after, "cliprs_search_stage_seconds_count", stage=stage) - value(
            before["api"], "cliprs_search_stage_seconds_count", stage=stage
        )
        assert grew >= 1, stage
    # The index this searcher serves: its version and vectors, per shard too.
    ready = httpx.get(f"{stack['api']}/readyz").json()
    assert value(after, "cliprs_index_version") == searched.json()["index_version"]
    assert value(after, "cliprs_index_vectors") == ready["checks"]["index"]["vectors"]
    assert value(after, "cliprs_index_shard_vectors") == ingested["job"]["windows_indexed"]
    assert value(after, "cliprs_queue_length", queue="embed") == 0


def test_tiler_and_embedder_expose_metrics(stack: dict, searched) -> None:
    embedder = scrape(f"{stack['embedder']}/metrics")
    assert value(embedder, "cliprs_http_requests_total", service="embedder", status="200") >= 1
    assert any(lab["route"].startswith("/v1/embed") for lab, _ in embedder["cliprs_http_requests_total"])
    httpx.get(f"{stack['tiler']}/healthz")
    tiler = scrape(f"{stack['tiler']}/metrics")
    assert value(tiler, "cliprs_http_requests_total", service="tiler", route="/healthz", status="200") >= 1


def _json_lines(stack: dict, name: str) -> list[dict]:
    path = stack["stack"].log_dir / f"{name}.log"
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def test_json_logs_carry_the_request_id_across_services(stack: dict, ingested: dict, searched) -> None:
    assert searched.headers["x-request-id"] == "search-req-1"
    api = _json_lines(stack, "search-api")
    assert any(r.get("request_id") == "search-req-1" and r.get("route") == "/v1/search" for r in api)
    # Forwarded to the embedder with the query's embedding call.
    embedder = _json_lines(stack, "embedder")
    assert any(r.get("request_id") == "search-req-1" for r in embedder), embedder[-5:]
    # Carried by the Celery tasks the area's creation started: fetch, then embed.
    for worker in ("tiler-worker", "embedder-worker-1"):
        lines = _json_lines(stack, worker)
        assert any(r.get("request_id") == "ingest-req-1" for r in lines), (worker, lines[-5:])
    for record in api:
        assert {"ts", "level", "logger", "service", "msg"} <= set(record)


def test_no_log_holds_a_secret(stack: dict, searched) -> None:
    for log in stack["stack"].log_dir.glob("*.log"):
        assert SECRET not in log.read_text(errors="replace"), log.name
