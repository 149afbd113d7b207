"""Internal services are internal, in-process against the real PostgreSQL and Redis:

- with reads needing a key, every read path needs it: map tiles, window pixels and job progress
  on the tiler; jobs, exports and the detection vector tiles on the search-api (anonymous 401,
  a read key 200; a revoked key 401; health and plan previews stay public);
- the embedder with a service token answers /v1/embed/* only to a caller that sends it (the
  search-api's client, configured with SEARCH_EMBEDDER_TOKEN); its health stays public.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import mercantile
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from cliprs.db.engine import sync_engine
from cliprs.errors import Unavailable
from cliprs.settings import CoreSettings
from cliprs_embedder.app import create_app as create_embedder
from cliprs_embedder.settings import EmbedderSettings
from cliprs_model import load_encoder
from cliprs_model.settings import ModelSettings
from cliprs_search.app import create_app as create_search
from cliprs_search.embedder_client import EmbedderClient
from cliprs_search.settings import SearchSettings
from cliprs_testing.factories import make_area, make_job, make_project, make_run, make_tile, make_window
from cliprs_testing.faultserver import make_tile as tile_png
from cliprs_testing.keys import TestKey
from cliprs_tiler.app import create_app as create_tiler
from cliprs_tiler.settings import TilerSettings

CENTRE = (24.94, 60.17)  # Helsinki: far from the other tests' areas
Z = 14
TOKEN = "svc-" + "7" * 40


@pytest.fixture
def world(pg_url: str, redis_url: str, tmp_path: Path, seeded_areas: list[int]) -> Iterator[dict]:
    """A local-source area with one fetched tile (its file in the source folder), a window, an
    ingest job, a project and a done run."""
    source = f"internal-{uuid.uuid4().hex[:6]}"
    folder = tmp_path / "tiles"
    t = mercantile.tile(*CENTRE, Z)
    (folder / str(Z) / str(t.x)).mkdir(parents=True)
    (folder / str(Z) / str(t.x) / f"{t.y}.png").write_bytes(tile_png(Z, t.x, t.y))
    core = CoreSettings(
        database_url=pg_url,
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        redis_namespace=f"internal-{uuid.uuid4().hex[:6]}",
        tile_sources={source: f"file://{folder}/{{z}}/{{x}}/{{y}}.png"},
    )
    b = mercantile.bounds(t)
    engine = sync_engine(pg_url)
    with engine.begin() as conn:
        area = make_area(conn, name="internal", bbox=tuple(b), zooms=[Z], source=source, status="ready")
        seeded_areas.append(area)
        tile_id = make_tile(conn, area, Z, t.x, t.y, source=source, tile_size=256)
        window = make_window(conn, tile_id * 4096, tile_id, px=(0, 0, 128, 128), scale=0.5)
        job = make_job(conn, area, state="done")
        project = make_project(conn, "internal", "x")
        conn.execute(text("INSERT INTO project_areas VALUES (:p, :a)"), {"p": project, "a": area})
        run = make_run(conn, project)
    yield {"core": core, "source": source, "tile": t, "window": window, "job": job, "run": run}
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM projects WHERE id = :p"), {"p": project})


def test_every_read_path_needs_a_key_when_reads_do(world: dict, api_keys: dict[str, TestKey]) -> None:
    core, t = world["core"], world["tile"]
    tiler = create_tiler(core, TilerSettings(require_key_for_reads=True))
    search = create_search(
        core,
        SearchSettings(
            auth="on", require_key_for_reads=True, geocoder="none", embedder_url="http://127.0.0.1:9"
        ),
    )
    with TestClient(tiler) as tiles, TestClient(search) as api:
        reads = [
            (tiles, f"/tiles/{world['source']}/{Z}/{t.x}/{t.y}.png"),
            (tiles, f"/windows/{world['window']}.png"),
            (tiles, f"/v1/jobs/{world['job']}/progress"),
            (api, f"/v1/jobs/{world['job']}"),
            (api, f"/v1/runs/{world['run']}/export.geojson"),
            (api, f"/v1/runs/{world['run']}/export.csv"),
            (api, f"/v1/runs/{world['run']}/tiles/{Z}/{t.x}/{t.y}.mvt"),
        ]
        problems = []
        for client, path in reads:
            anonymous = client.get(path)
            if anonymous.status_code != 401 or anonymous.json()["error"]["code"] != "unauthorized":
                problems.append(f"anonymous {path}: {anonymous.status_code}")
            elif "X-API-Key" not in anonymous.json()["error"]["message"]:
                problems.append(f"anonymous {path}: the 401 does not say how to send a key")
            for headers in (api_keys["read"].headers, {"X-API-Key": api_keys["read"].secret}):
                keyed = client.get(path, headers=headers)
                if keyed.status_code != 200:
                    problems.append(f"{path} with a read key: {keyed.status_code} {keyed.text[:200]}")
            revoked = client.get(path, headers=api_keys["revoked"].headers)
            if revoked.status_code != 401:
                problems.append(f"{path} with a revoked key: {revoked.status_code}")
        assert not problems, "\n".join(problems)
        bad = tiles.get(reads[0][1], headers={"Authorization": "Basic abc"})
        assert bad.status_code == 401 and "Bearer" in bad.json()["error"]["message"]
        # Public: liveness, and plan previews (tile arithmetic, no imagery).
        assert tiles.get("/healthz").status_code == 200 and api.get("/healthz").status_code == 200
        plan = tiles.get("/v1/plan", params={"bbox": "24.9,60.1,24.95,60.2", "zooms": "12"})
        assert plan.status_code == 200


def test_the_tiler_follows_the_search_apis_read_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """One setting closes every read path: the tiler follows SEARCH_REQUIRE_KEY_FOR_READS unless
    its own TILER_REQUIRE_KEY_FOR_READS says otherwise."""
    assert TilerSettings().require_key_for_reads is False
    monkeypatch.setenv("SEARCH_REQUIRE_KEY_FOR_READS", "true")
    assert TilerSettings().require_key_for_reads is True
    monkeypatch.setenv("TILER_REQUIRE_KEY_FOR_READS", "false")
    assert TilerSettings().require_key_for_reads is False


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path):
    return load_encoder(ModelSettings(model=str(tiny_model_dir), device="cpu"))


async def test_the_embedder_answers_only_with_its_service_token(encoder) -> None:
    app = create_embedder(EmbedderSettings(service_token=TOKEN), encoder=encoder)
    with TestClient(app) as client:
        body = {"texts": ["boats near a pier"]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            resp = client.post("/v1/embed/text", json=body, headers=headers)
            assert resp.status_code == 401, (headers, resp.text)
            assert resp.json()["error"]["code"] == "unauthorized"
            assert TOKEN not in resp.text
        image = client.post("/v1/embed/image", files={"file": ("t.png", tile_png(1, 0, 0), "image/png")})
        assert image.status_code == 401
        ok = client.post("/v1/embed/text", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and len(ok.json()["vectors"]) == 1
        assert client.get("/healthz").status_code == 200  # the orchestrator's probe needs no token

        # The search-api's client sends the token it is configured with; without it, the embedder
        # is unavailable to it (a 503 to the caller, never the caller's fault).
        transport = httpx.ASGITransport(app=app)
        with_token = EmbedderClient("http://embedder.test", transport=transport, token=TOKEN)
        without = EmbedderClient("http://embedder.test", transport=transport)
        try:
            vectors, _ = await with_token.embed_texts(["boats near a pier"])
            assert vectors.shape[0] == 1
            with pytest.raises(Unavailable, match="unauthorized"):
                await without.embed_texts(["boats near a pier"])
        finally:
            await with_token.aclose()
            await without.aclose()


def test_a_short_service_token_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="shorter than 16"):
        EmbedderSettings(service_token="abc")


def test_the_search_api_passes_its_embedder_token() -> None:
    settings = SearchSettings(embedder_token=TOKEN, embedder_url="http://127.0.0.1:9")
    app = create_search(CoreSettings(), settings)
    assert app.state.ctx.embedder.client.headers["authorization"] == f"Bearer {TOKEN}"
