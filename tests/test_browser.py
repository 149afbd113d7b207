"""The web map in a real headless Chromium (Debian's ``chromium``, driven by Playwright) against
the real platform on loopback: PostGIS, Redis, tiler, embedder, indexer, search-api and web as
processes, one small Sentinel-2 area ingested through the API before the tests, another through
the page's own form.

The stack runs on the generated fallback model (``CLIP_FALLBACK=1`` with a model that cannot
load; the fallback is the tiny test CLIP), so the fallback banner is shown for real.

Every test saves a screenshot under ``test-artifacts/browser/``.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import mercantile
import pytest
from playwright.sync_api import sync_playwright
from shapely.geometry import box, shape

from cliprs.db.engine import sync_engine
from cliprs.tiles import BBox, tiles_for_bbox
from cliprs_testing.browser import CHROMIUM, CHROMIUM_ARGS
from cliprs_testing.factories import window_quality
from tests.support.platform import finish_job

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="pip install playwright (requirements-dev.txt)"
)

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "browser"

SOURCE = "browser-test"  # its own: tiles are shared by (source, z, x, y) across the session database
# Ingested through the API before the tests: farmland and a creek on Virginia's Eastern Shore.
AREA_BBOX = [-75.66, 37.66, -75.62, 37.69]
AREA_ZOOMS = [13, 14]
# Drawn and ingested through the page's form (tiles rendered with a margin around it).
NEW_AREA_BBOX = [-75.585, 37.705, -75.565, 37.72]
NEW_AREA_MARGIN = 0.01
MAX_TILES = 200
K = 20


def _margin(bbox: list[float], d: float) -> BBox:
    return BBox(bbox[0] - d, bbox[1] - d, bbox[2] + d, bbox[3] + d)


@pytest.fixture(scope="module")
def tile_folder(render_tiles, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Sentinel-2 tiles of both test areas, rendered into an XYZ folder."""
    wanted = {*tiles_for_bbox(BBox(*AREA_BBOX), AREA_ZOOMS)}
    wanted |= {*tiles_for_bbox(_margin(NEW_AREA_BBOX, NEW_AREA_MARGIN), AREA_ZOOMS)}
    return render_tiles(tmp_path_factory.mktemp("tiles"), wanted)


@pytest.fixture(scope="module")
def stack(start_platform, tiny_model_dir: Path, tile_folder: Path, tmp_path_factory) -> Iterator[dict]:
    """Every service including the web page as a real process, on the fallback model."""
    env = {
        "CLIPRS_TILE_SOURCES": json.dumps({SOURCE: f"file://{tile_folder}/{{z}}/{{x}}/{{y}}.png"}),
        "CLIPRS_MAX_TILES_PER_AREA": str(MAX_TILES),
        # A model that cannot load, and the fallback allowed: the fallback is the tiny CLIP.
        "CLIP_MODEL": str(tmp_path_factory.mktemp("models") / "no-such-model"),
        "CLIP_FALLBACK": "1",
        "CLIP_FALLBACK_DIR": str(tiny_model_dir),
    }
    with start_platform("browser", env, with_web=True) as platform:
        yield platform


@pytest.fixture(scope="module")
def ingested(stack: dict) -> dict:
    """The first area, created through the API and followed until searchable."""
    resp = httpx.post(
        f"{stack['api']}/v1/areas",
        json={"name": "Creek farmland", "bbox": AREA_BBOX, "zooms": AREA_ZOOMS, "source": SOURCE},
    )
    assert resp.status_code == 202, resp.text
    body = resp.json()
    return {"area": body["area"], "job": finish_job(stack, body["job"])}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (make install does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, stack: dict, *, width: int = 1280, height: int = 800, path: str = "/"):
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack["web"])
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    # Tiles just outside an area answer 404, which Chromium logs; anything else is a problem.
    page.on(
        "console",
        lambda msg: (
            problems.append(msg.text)
            if msg.type == "error" and "Failed to load resource" not in msg.text
            else None
        ),
    )
    page.goto(stack["web"] + path)
    page.wait_for_selector("body[data-ready=true][data-map=ready]", timeout=30_000)
    page.problems = problems  # type: ignore[attr-defined]
    return page


@pytest.fixture
def page(browser, stack: dict, ingested: dict, request: pytest.FixtureRequest) -> Iterator[object]:
    """The map page at 1280x800 with the first area indexed; a screenshot is saved afterwards."""
    pg = _open(browser, stack)
    yield pg
    _screenshot(pg, request.node.name)
    pg.context.close()


def _screenshot(pg, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    pg.screenshot(path=str(path))
    return path


def _search(pg, text: str) -> None:
    pg.fill("#search-input", text)
    pg.press("#search-input", "Enter")
    _wait_results(pg)


def _wait_results(pg) -> None:
    pg.wait_for_function(
        "() => !document.getElementById('results').hasAttribute('aria-busy')"
        " && /results? for|No results/.test(document.getElementById('status').textContent)"
    )


def _result_ids(pg) -> list[int]:
    return [int(v) for v in pg.eval_on_selector_all("#results .result", "els => els.map(e => e.dataset.id)")]


def _shown_scores(pg) -> list[float]:
    texts = pg.eval_on_selector_all("#results .result .score", "els => els.map(e => e.textContent)")
    return [float(t.split("score ")[1]) for t in texts]


def _pin_ids(pg) -> list[int]:
    data = pg.evaluate("() => cliprs.map.getSource('hit-pins').getData()")
    return sorted(int(f["id"]) for f in data["features"])


def _api_ids(stack: dict, **params) -> list[int]:
    resp = httpx.get(f"{stack['api']}/v1/search", params={"k": K, **params})
    assert resp.status_code == 200, resp.text
    return [f["properties"]["window_id"] for f in resp.json()["features"]]


def _errors(pg) -> str:
    return pg.inner_text("#errors") if pg.is_visible("#errors") else ""


def _map_pixel(pg, lon: float, lat: float) -> tuple[float, float]:
    """Page coordinates of a lon/lat on the map."""
    x, y = pg.evaluate(
        "([lon, lat]) => { const p = cliprs.map.project([lon, lat]);"
        " const r = cliprs.map.getCanvas().getBoundingClientRect(); return [r.left + p.x, r.top + p.y]; }",
        [lon, lat],
    )
    return x, y


def _fit(pg, bbox: list[float]) -> None:
    pg.evaluate(
        "(b) => new Promise(res => { cliprs.map.once('moveend', () => res());"
        " cliprs.map.fitBounds([[b[0], b[1]], [b[2], b[3]]], {padding: {top: 60, bottom: 60, left: 440, right: 60}, duration: 0}); })",
        bbox,
    )


# ---------------------------------------------------------------- the page and the banner


def test_page_shows_areas_and_the_fallback_banner(page, stack: dict, ingested: dict) -> None:
    banner = page.locator("#fallback-banner")
    banner.wait_for(state="visible")
    assert "Fallback model in use" in banner.inner_text()
    assert "no-such-model" in banner.inner_text()  # names the model that could not be loaded
    page.click("#tab-areas")
    item = page.locator(f".area-item[data-area-id='{ingested['area']['id']}']")
    assert "Creek farmland" in item.inner_text() and "ready" in item.inner_text()
    page.click("#tab-search")
    options = page.eval_on_selector_all("#search-area option", "els => els.map(e => e.textContent)")
    # Other tests of the session may have left areas in the shared database: look for ours.
    assert options[0] == "All areas" and "Creek farmland" in options
    # The area's imagery comes from the tiler once the map has rendered.
    page.wait_for_function("() => cliprs.map.areTilesLoaded()")
    assert page.evaluate(f"() => Boolean(cliprs.map.getSource('area-imagery-{ingested['area']['id']}'))")
    assert not _errors(page)
    assert page.problems == []


def test_no_banner_when_the_real_model_is_loaded(browser, stack: dict, ingested: dict) -> None:
    """The banner logic on the same real /readyz answer, with the model reported as loaded."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()

    def real_model(route) -> None:
        body = route.fetch().json()
        body["model"] = {**body["model"], "fallback": False, "requested": body["model"]["loaded"]}
        body["model"].pop("reason", None)
        route.fulfill(json=body, headers={"access-control-allow-origin": "*"})

    pg.route(f"{stack['api']}/readyz", real_model)
    pg.goto(stack["web"])
    # The banner starts hidden: wait until the page has handled the (rewritten) readiness answer.
    pg.wait_for_selector("body[data-ready=true][data-map=ready][data-readiness=ready]")
    assert pg.locator("#fallback-banner").is_hidden()
    _screenshot(pg, "test_no_banner_when_the_real_model_is_loaded")
    context.close()


def test_a_stored_key_goes_with_tiles_and_window_pixels(browser, stack: dict, ingested: dict) -> None:
    """When reads need a key the tiler wants it too: the page sends the stored key with MapLibre's
    tile requests and fetches thumbnails with it (an <img> cannot send headers); the map asks
    only for the zooms the area planned."""
    key = "ck_12345678_browser-test-key"
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(f"sessionStorage.setItem('cliprs.apiKey', '{key}')")
    pg = context.new_page()
    sent: list[tuple[str, str | None]] = []
    pg.on(
        "request",
        lambda r: (
            sent.append((r.url, r.headers.get("x-api-key")))
            if r.method == "GET" and r.url.startswith(stack["tiler"])
            else None
        ),
    )
    pg.goto(stack["web"])
    pg.wait_for_selector("body[data-ready=true][data-map=ready]", timeout=30_000)
    _fit(pg, AREA_BBOX)
    pg.wait_for_function("() => cliprs.map.areTilesLoaded()")
    _search(pg, "farmland along a creek")
    pg.wait_for_function(
        "() => [...document.querySelectorAll('#results img.thumb')].some(i => i.complete && i.naturalWidth > 0)"
    )
    sources = pg.eval_on_selector_all("#results img.thumb", "els => els.map(e => e.src)")
    tiles = [(url, sent_key) for url, sent_key in sent if f"/tiles/{SOURCE}/" in url]
    windows = [(url, sent_key) for url, sent_key in sent if "/windows/" in url]
    assert tiles and windows, sent
    assert all(sent_key == key for _, sent_key in tiles + windows), sent
    assert any(src.startswith("blob:") for src in sources), sources
    assert {int(url.split(f"/tiles/{SOURCE}/")[1].split("/")[0]) for url, _ in tiles} <= set(AREA_ZOOMS)
    _screenshot(pg, "test_a_stored_key_goes_with_tiles_and_window_pixels")
    context.close()


# ---------------------------------------------------------------- search


def test_text_search_lists_pins_and_flies_to_the_best_hit(page, stack: dict) -> None:
    _search(page, "farmland along a creek")
    ids = _result_ids(page)
    assert ids == _api_ids(stack, q="farmland along a creek")  # same hits, same order as the API
    assert len(ids) == K
    status = page.inner_text("#status")
    assert status.startswith(f"{K} results for “farmland along a creek” in ") and " ms" in status
    assert _pin_ids(page) == sorted(ids)
    first = page.locator("#results .result").first
    assert "zoom 1" in first.inner_text() and "° N" in first.inner_text()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results .thumb')].slice(0, 5).every(i => i.complete && i.naturalWidth > 0)"
    )
    # The map flies to the best hit: once it stops, the best hit's centre is in view.
    page.wait_for_function("() => !cliprs.map.isMoving()")
    best = httpx.get(f"{stack['api']}/v1/search", params={"q": "farmland along a creek", "k": 1}).json()
    lon, lat = best["features"][0]["properties"]["center"]
    assert page.evaluate(f"() => cliprs.map.getBounds().contains([{lon}, {lat}])")
    assert page.get_attribute(f".result[data-id='{ids[0]}'] .result__main", "aria-current") == "true"

    # The next page, through the API's cursor when it gives one.
    page.click("#more-results")
    page.wait_for_function(f"() => document.querySelectorAll('#results .result').length > {K}")
    first_page = httpx.get(f"{stack['api']}/v1/search", params={"q": "farmland along a creek", "k": K}).json()
    if first_page.get("next_cursor"):
        params = {"q": "farmland along a creek", "k": K, "cursor": first_page["next_cursor"]}
        second = httpx.get(f"{stack['api']}/v1/search", params=params).json()
        expected = ids + [f["properties"]["window_id"] for f in second["features"]]
    else:
        expected = _api_ids(stack, q="farmland along a creek", k=2 * K)
    assert _result_ids(page) == expected


def test_hover_highlights_the_pin_and_a_click_on_a_pin_opens_its_card(page, stack: dict) -> None:
    _search(page, "a field")
    page.wait_for_function("() => !cliprs.map.isMoving()")
    ids = _result_ids(page)
    target = ids[1]
    page.hover(f".result[data-id='{target}'] .result__main")
    state = page.evaluate(f"() => cliprs.map.getFeatureState({{source: 'hit-pins', id: {target}}})")
    assert state.get("hover") is True
    footprint = page.evaluate(f"() => cliprs.map.getFeatureState({{source: 'hit-footprints', id: {target}}})")
    assert footprint.get("hover") is True
    # Click the pin of the target (found where the map draws it).
    center = page.evaluate(f"() => cliprs.search.visible.find(f => f.id === {target}).properties.center")
    page.evaluate(f"() => cliprs.map.jumpTo({{center: {center}}})")  # in view, clear of the panel
    page.mouse.click(*_map_pixel(page, *center))
    card = page.locator(".maplibregl-popup .card")
    card.wait_for(state="visible")
    clicked = int(card.get_attribute("data-id"))
    assert clicked in ids  # pins may overlap: the card is the clicked pin's
    assert page.get_attribute(f".result[data-id='{clicked}'] .result__main", "aria-current") == "true"
    assert "score" in card.inner_text() and "zoom" in card.inner_text()


def test_coordinates_copy_and_results_download_as_geojson(page, stack: dict) -> None:
    _search(page, "houses")
    first = page.locator("#results .result").first
    copy = first.locator(".coords__copy")
    expected = copy.get_attribute("data-copy")
    copy.click()
    assert page.evaluate("() => navigator.clipboard.readText()") == expected
    lat, lon = (float(v) for v in expected.split(","))
    center = page.evaluate("() => cliprs.search.visible[0].properties.center")
    assert (round(lon, 6), round(lat, 6)) == (round(center[0], 6), round(center[1], 6))

    with page.expect_download() as download_info:
        page.click("#download-results")
    download = download_info.value
    assert download.suggested_filename == "cliprs-houses.geojson"
    data = json.loads(Path(download.path()).read_text())
    assert data["type"] == "FeatureCollection"
    assert data["query"] == {"text": "houses"}
    assert [f["properties"]["window_id"] for f in data["features"]] == _result_ids(page)
    for f in data["features"]:
        assert shape(f["geometry"]).is_valid and "score_norm" not in f["properties"]


def test_sensitivity_slider_filters_live(page, stack: dict) -> None:
    _search(page, "a beach")
    assert len(_result_ids(page)) == K
    slider = page.locator("#min-score")
    slider.focus()
    for _ in range(3):
        page.keyboard.press("PageUp")  # keyboard steps raise the minimum score
    threshold = float(page.input_value("#min-score"))
    scores = _shown_scores(page)
    assert 0 < len(scores) < K
    assert min(scores) >= round(threshold, 3) - 0.0005
    assert page.inner_text("#min-score-value") == f"{threshold:.3f}"
    assert page.inner_text("#status").startswith(f"{len(scores)} of {K} results")
    assert len(_pin_ids(page)) == len(scores)  # the map follows the list
    page.keyboard.press("End")  # only the best remain
    top = float(page.input_value("#min-score"))
    best = _shown_scores(page)
    assert 1 <= len(best) <= len(scores) and min(best) >= round(top, 3) - 0.0005
    page.keyboard.press("Home")
    assert len(_result_ids(page)) == K and len(_pin_ids(page)) == K


def test_find_similar_ranks_the_window_itself_first(page, stack: dict) -> None:
    _search(page, "marsh")
    target = _result_ids(page)[2]
    page.click(f".result[data-id='{target}'] >> text=Find similar")
    page.wait_for_function(
        f"() => /similar to window {target}/.test(document.getElementById('status').textContent)"
    )
    _wait_results(page)
    ids = _result_ids(page)
    api = httpx.get(f"{stack['api']}/v1/windows/{target}/similar", params={"k": K}).json()
    assert ids == [f["properties"]["window_id"] for f in api["features"]]
    assert ids[0] == target
    assert _shown_scores(page)[0] >= 0.99


def test_image_search_with_a_windows_pixels_finds_it(page, stack: dict, tmp_path: Path) -> None:
    _search(page, "a road")
    target = _result_ids(page)[4]
    png = httpx.get(f"{stack['tiler']}/windows/{target}.png").content
    picture = tmp_path / "query.png"
    picture.write_bytes(png)
    page.set_input_files("#image-input", str(picture))
    page.wait_for_function(
        "() => /the image “query.png”/.test(document.getElementById('status').textContent)"
    )
    _wait_results(page)
    assert _result_ids(page)[0] == target
    assert _shown_scores(page)[0] >= 0.99

    # The same picture dropped on the drop zone (a real drop event carrying the file).
    other = _result_ids(page)[3]
    dropped = list(httpx.get(f"{stack['tiler']}/windows/{other}.png").content)
    page.evaluate(
        """(bytes) => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(bytes)], 'dropped.png', {type: 'image/png'}));
            const zone = document.getElementById('drop-zone');
            for (const type of ['dragenter', 'dragover', 'drop']) {
                zone.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
            }
        }""",
        dropped,
    )
    page.wait_for_function(
        "() => /the image “dropped.png”/.test(document.getElementById('status').textContent)"
    )
    _wait_results(page)
    assert _result_ids(page)[0] == other


@pytest.fixture
def marked(stack: dict, ingested: dict, pg_url: str) -> Iterator[dict]:
    """Quality set on three windows of the ingested area, whatever the ingest measured, and the
    measured values back afterwards: one cloudy, one half no-data, one clear, and the clear one
    sharing its fingerprint (identical pixels) with a fourth."""
    hits = httpx.get(
        f"{stack['api']}/v1/search", params={"q": "farmland", "k": 4, "max_cloud": 1, "min_valid": 0}
    )
    cloudy, empty, clear, twin = [f["properties"]["window_id"] for f in hits.json()["features"]]
    engine = sync_engine(pg_url)
    values = {
        cloudy: (0.8, 1.0, None),
        empty: (0.0, 0.5, None),
        clear: (0.1, 0.95, 7_777_777),
        twin: (0.1, 0.95, 7_777_777),
    }
    with window_quality(engine, values):
        yield {"cloudy": cloudy, "empty": empty, "clear": clear, "twin": twin}


def _rerun_with(page, selector: str, value: str) -> dict[str, list[str]]:
    """Choose ``value`` in a filter control (which re-runs the search); the query string sent."""
    with page.expect_request(lambda r: "/v1/search" in r.url or "/similar" in r.url) as request:
        page.select_option(selector, value)
    _wait_results(page)
    return parse_qs(urlparse(request.value.url).query)


def test_quality_filters_are_sent_and_hits_show_their_quality(page, stack: dict, marked: dict) -> None:
    _search(page, "farmland")
    # The first answer reports the API's defaults: the "Default" options name them, and every
    # later search sends them.
    defaults = httpx.get(f"{stack['api']}/v1/search", params={"q": "farmland", "k": 1}).json()["filter"]
    assert page.inner_text("#max-cloud option[value='']").startswith("Default (")
    min_valid_default = f"{round(defaults['min_valid'] * 100)} %"
    assert page.inner_text("#min-valid option[value='']") == f"Default ({min_valid_default})"
    ids = _result_ids(page)
    assert ids == _api_ids(stack, q="farmland")
    assert marked["cloudy"] not in ids and marked["empty"] not in ids  # the defaults hide them

    sent = _rerun_with(page, "#max-cloud", "0.5")
    assert sent["max_cloud"] == ["0.5"] and sent["min_valid"] == [str(defaults["min_valid"])]
    assert _result_ids(page) == _api_ids(stack, q="farmland", max_cloud=0.5, min_valid=defaults["min_valid"])
    assert marked["cloudy"] not in _result_ids(page)

    sent = _rerun_with(page, "#min-valid", "0")
    assert sent["max_cloud"] == ["0.5"] and sent["min_valid"] == ["0"]
    assert _result_ids(page) == _api_ids(stack, q="farmland", max_cloud=0.5, min_valid=0)

    # Everything shown: the best two hits of the marking are back, each with its quality.
    sent = _rerun_with(page, "#max-cloud", "1")
    assert sent["max_cloud"] == ["1"] and sent["min_valid"] == ["0"]
    ids = _result_ids(page)
    assert ids == _api_ids(stack, q="farmland", max_cloud=1, min_valid=0)
    assert ids[:2] == [marked["cloudy"], marked["empty"]]
    assert "cloud 80 % · valid 100 %" in page.inner_text(f".result[data-id='{marked['cloudy']}']")
    assert "cloud 0 % · valid 50 %" in page.inner_text(f".result[data-id='{marked['empty']}']")

    # Find similar sends them too; the window itself comes first, standing for its identical twin.
    assert ids[2] == marked["clear"] and marked["twin"] not in ids  # the twin collapsed into it
    with page.expect_request(lambda r: "/similar" in r.url) as request:
        page.click(f".result[data-id='{marked['clear']}'] >> text=Find similar")
    _wait_results(page)
    sent = parse_qs(urlparse(request.value.url).query)
    assert sent["max_cloud"] == ["1"] and sent["min_valid"] == ["0"]
    first = page.locator("#results .result").first
    assert int(first.get_attribute("data-id")) == marked["clear"]
    assert "×1 identical" in first.inner_text() and "cloud 10 % · valid 95 %" in first.inner_text()
    assert marked["twin"] not in _result_ids(page)
    assert not _errors(page) and page.problems == []


# ---------------------------------------------------------------- restricting by a drawn shape


def test_a_drawn_box_restricts_the_search(page, stack: dict) -> None:
    _search(page, "farmland")
    _fit(page, AREA_BBOX)
    # Draw a box over the north-west quarter of the area.
    w, s, e, n = AREA_BBOX
    corner_a = _map_pixel(page, w - 0.002, n + 0.002)
    corner_b = _map_pixel(page, (w + e) / 2, (s + n) / 2)
    page.click("#restrict-box")
    assert page.is_visible("#map-hint")
    page.mouse.move(*corner_a)
    page.mouse.down()
    page.mouse.move(*corner_b, steps=8)
    page.mouse.up()
    page.wait_for_function(
        "() => /Searching only inside a box/.test(document.getElementById('restriction').textContent)"
    )
    _wait_results(page)
    drawn = page.evaluate("() => cliprs.search.shape.bbox")
    assert drawn[0] == pytest.approx(w - 0.002, abs=0.001) and drawn[3] == pytest.approx(n + 0.002, abs=0.001)
    ids = _result_ids(page)
    assert ids, "the box covers part of the area, so something is found"
    bbox_param = ",".join(f"{round(v, 6)}" for v in drawn)
    assert ids == _api_ids(stack, q="farmland", bbox=bbox_param)
    for footprint in page.evaluate("() => cliprs.search.visible.map(f => f.geometry)"):
        assert shape(footprint).intersects(box(*drawn))
    page.click("#restrict-clear")
    page.wait_for_function(
        "() => /Searching everywhere/.test(document.getElementById('restriction').textContent)"
    )
    _wait_results(page)
    assert _result_ids(page) == _api_ids(stack, q="farmland")


def test_a_drawn_polygon_restricts_the_search(page, stack: dict) -> None:
    _search(page, "trees")
    _fit(page, AREA_BBOX)
    w, s, e, n = AREA_BBOX
    corners = [(w + 0.005, s + 0.005), (e - 0.005, s + 0.005), ((w + e) / 2, n - 0.005)]
    page.click("#restrict-polygon")
    for lon, lat in corners:
        page.mouse.click(*_map_pixel(page, lon, lat))
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => /inside a polygon of 3 corners/.test(document.getElementById('restriction').textContent)"
    )
    _wait_results(page)
    ids = _result_ids(page)
    assert ids
    polygon = shape(page.evaluate("() => cliprs.search.shape.geometry"))
    footprints = [shape(g) for g in page.evaluate("() => cliprs.search.visible.map(f => f.geometry)")]
    if page.is_visible("#search-note"):
        # This search API has no polygon filter: the page says so and searched the polygon's box.
        assert "bounding box" in page.inner_text("#search-note")
        assert all(f.intersects(box(*polygon.bounds)) for f in footprints)
    else:
        assert all(f.intersects(polygon) for f in footprints)
        body = {"q": "trees", "k": K, "polygon": page.evaluate("() => cliprs.search.shape.geometry")}
        api = httpx.post(f"{stack['api']}/v1/search", json=body).json()
        assert ids == [f["properties"]["window_id"] for f in api["features"]]


# ---------------------------------------------------------------- errors


def test_bad_input_gets_a_clear_message(page, stack: dict, tmp_path: Path) -> None:
    page.fill("#search-input", "   ")
    page.press("#search-input", "Enter")
    assert "Type what to look for" in _errors(page)

    page.fill("#search-input", "?!#")
    page.press("#search-input", "Enter")
    page.wait_for_function("() => /HTTP 400/.test(document.getElementById('errors').textContent)")
    assert "no letters or digits" in _errors(page)  # the API's own message, which says how to fix it

    _search(page, "a pier")  # a good search clears the search error
    assert not _errors(page)

    fake = tmp_path / "fake.png"
    fake.write_bytes(b"this is not an image")
    page.set_input_files("#image-input", str(fake))
    page.wait_for_function("() => /not a readable image/.test(document.getElementById('errors').textContent)")

    page.click("#tab-areas")
    page.fill("#area-name", "Too big")
    page.fill("#area-bbox", "-76, 37, -75, 38")
    page.fill("#area-source", SOURCE)
    page.check("#area-zooms input[value='16']")
    planned = int(page.get_attribute("#area-plan", "data-tiles"))
    page.click("#area-start")
    page.wait_for_function("() => /was not started/.test(document.getElementById('errors').textContent)")
    message = _errors(page)
    assert f"needs {planned} tiles" in message or f"needs about {planned} tiles" in message
    assert str(MAX_TILES) in message
    page.fill("#area-bbox", "-75.6, 37.7, -75.7, 37.6")
    assert "West must be less than east" in page.inner_text("#area-plan")


# ---------------------------------------------------------------- a new area through the form


def test_draw_a_new_area_watch_it_ingest_then_search_it(page, stack: dict) -> None:
    page.click("#tab-areas")
    _fit(page, NEW_AREA_BBOX)
    w, s, e, n = NEW_AREA_BBOX
    page.fill("#area-name", "Drawn in the browser")
    page.click("#area-draw")
    page.mouse.move(*_map_pixel(page, w, n))
    page.mouse.down()
    page.mouse.move(*_map_pixel(page, e, s), steps=8)
    page.mouse.up()
    drawn = [float(v) for v in page.input_value("#area-bbox").split(",")]
    assert drawn == pytest.approx(NEW_AREA_BBOX, abs=0.0005)
    expected = sum(len(list(mercantile.tiles(*drawn, zooms=[z]))) for z in AREA_ZOOMS)
    page.wait_for_function(f"() => document.getElementById('area-plan').dataset.tiles === '{expected}'")
    assert f"{expected} tiles to fetch" in page.inner_text("#area-plan")
    page.fill("#area-source", SOURCE)
    page.click("#area-start")

    job = page.locator(".job").first
    job.wait_for(state="visible")
    first_state = job.get_attribute("data-state")
    assert first_state in ("queued", "fetching", "embedding", "indexing")
    _screenshot(page, "test_new_area_in_progress")
    page.wait_for_selector(".job[data-state=done]", timeout=180_000)
    assert "Ready to search" in job.inner_text()
    bars = job.locator(".bar__meter")
    for i in range(bars.count()):
        assert bars.nth(i).evaluate("b => b.value === b.max")
    area = next(
        a for a in httpx.get(f"{stack['api']}/v1/areas").json() if a["name"] == "Drawn in the browser"
    )
    assert area["status"] == "ready" and area["job"]["tiles_planned"] == expected
    skipped = area["job"]["windows_skipped_nodata"]  # windows mostly outside the imagery
    assert (f"{skipped:,} windows skipped (no data)" in job.inner_text()) == (skipped > 0)
    page.wait_for_selector(f".area-item[data-area-id='{area['id']}'] .badge--ready")
    tiler_paths = httpx.get(f"{stack['tiler']}/openapi.json").json()["paths"]
    if "/v1/jobs/{job_id}/progress" in tiler_paths:  # the tiler reports progress per zoom
        rows = job.locator(".job__zooms .bar")
        labels = [rows.nth(i).locator(".bar__label").inner_text() for i in range(rows.count())]
        assert labels == [f"z{z}" for z in AREA_ZOOMS]

    page.click(f".area-item[data-area-id='{area['id']}'] >> text=Search here")
    assert page.input_value("#search-area") == str(area["id"])
    _search(page, "farmland")
    ids = _result_ids(page)
    assert ids == _api_ids(stack, q="farmland", area_id=area["id"])
    for footprint in page.evaluate("() => cliprs.search.visible.map(f => f.geometry)"):
        assert shape(footprint).intersects(box(*drawn))

    # Delete it again from the areas list (after a confirmation), when the API can.
    api_paths = httpx.get(f"{stack['api']}/openapi.json").json()["paths"]
    if "delete" in api_paths.get("/v1/areas/{area_id}", {}):
        page.click("#tab-areas")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click(f".area-item[data-area-id='{area['id']}'] >> text=Delete")
        page.wait_for_selector(f".area-item[data-area-id='{area['id']}']", state="detached", timeout=60_000)
        assert httpx.get(f"{stack['api']}/v1/areas/{area['id']}").status_code == 404
        assert not page.evaluate(f"() => Boolean(cliprs.map.getSource('area-imagery-{area['id']}'))")
        assert page.input_value("#search-area") == ""


# ---------------------------------------------------------------- keyboard, phone, tile math


def test_keyboard_only_search_and_card(page, stack: dict) -> None:
    page.locator("body").click(position={"x": 1200, "y": 700})  # focus away from the search box
    page.keyboard.press("/")
    assert page.evaluate("() => document.activeElement.id") == "search-input"
    page.keyboard.type("a farm")
    page.keyboard.press("Enter")
    _wait_results(page)
    first = _result_ids(page)[0]
    page.focus(f".result[data-id='{first}'] .result__main")
    page.keyboard.press("Tab")  # the copy button
    page.keyboard.press("Tab")  # find similar
    page.keyboard.press("Tab")  # locate on map
    assert page.evaluate("() => document.activeElement.textContent") == "Locate on map"
    page.keyboard.press("Enter")
    card = page.locator(f".maplibregl-popup .card[data-id='{first}']")
    card.wait_for(state="visible")
    page.keyboard.press("Escape")
    card.wait_for(state="detached")


def test_readable_on_a_phone(browser, stack: dict, ingested: dict) -> None:
    pg = _open(browser, stack, width=390, height=844, path="/?q=a%20small%20town")
    _wait_results(pg)
    assert len(_result_ids(pg)) == K
    map_box = pg.locator("#map").bounding_box()
    panel_box = pg.locator(".panel").bounding_box()
    assert map_box["width"] == 390 and panel_box["y"] >= map_box["y"] + map_box["height"] - 1
    assert pg.evaluate("() => document.documentElement.scrollWidth") <= 390
    assert pg.evaluate(
        "() => document.querySelector('.panel').scrollWidth <= document.querySelector('.panel').clientWidth"
    )
    _screenshot(pg, "test_readable_on_a_phone")
    pg.locator("#results .result").nth(3).scroll_into_view_if_needed()
    _screenshot(pg, "test_readable_on_a_phone_results")
    pg.context.close()


def _mercantile_count(bbox: list[float], z: int) -> int:
    """Tiles ``mercantile.tiles`` would list for a box, from its corner tiles (as it finds them),
    without enumerating hundreds of thousands of tiles at high zooms."""
    w, s, e, n = bbox
    ul = mercantile.tile(w, n, z)
    lr = mercantile.tile(e - mercantile.LL_EPSILON, s + mercantile.LL_EPSILON, z)
    return (lr.x - ul.x + 1) * (lr.y - ul.y + 1)


def test_page_tile_math_matches_mercantile(page) -> None:
    rng = random.Random(6)
    boxes = []
    for _ in range(200):
        lon, lat = rng.uniform(-179, 178), rng.uniform(-84, 83)
        boxes.append([lon, lat, lon + rng.uniform(1e-4, 1.0), lat + rng.uniform(1e-4, 1.0)])
    b = mercantile.bounds(4750, 6343, 14)  # a box exactly on tile borders is one tile
    boxes.append([b.west, b.south, b.east, b.north])
    zooms = [0, 3, 6, 9, 12, 14, 15, 18]
    got = page.evaluate(
        "async ([boxes, zooms]) => { const t = await import('/js/tiles.js');"
        " return boxes.map(b => zooms.map(z => t.countTilesAtZoom(b, z))); }",
        [boxes, zooms],
    )
    assert got == [[_mercantile_count(bb, z) for z in zooms] for bb in boxes]


# ---------------------------------------------------------------- find all: label, refine, detect, export


def _thumb(pg, window_id: int, positive: bool, where: str = "#results") -> None:
    """Press a window's thumb and wait until the page shows the answer of the API."""
    kind = "up" if positive else "down"
    group = f"{where} .thumbs[data-window-id='{window_id}']"
    before = pg.get_attribute(group, "data-label")
    pg.click(f"{group} .thumb-button--{kind}")
    pg.wait_for_function(
        "([sel, before]) => document.querySelector(sel)?.dataset.label !== before"
        " || !document.getElementById('errors').hidden",
        arg=[group, before],
    )
    assert not _errors(pg)


def _labels(stack: dict, project_id: int) -> dict[int, bool]:
    resp = httpx.get(f"{stack['api']}/v1/projects/{project_id}/labels", params={"footprint": "false"})
    assert resp.status_code == 200, resp.text
    return {row["window_id"]: row["positive"] for row in resp.json()}


def _count_at(histogram: list[int], threshold: float) -> int:
    """The API's rule (cliprs.runs.count_at): bins of 0.001, a threshold's bin is round(t * 1000)."""
    return sum(histogram[min(round(threshold * 1000), 999) :])


def test_find_all_label_refine_detect_threshold_and_export(page, stack: dict, ingested: dict) -> None:
    mvt: list[tuple[str, int]] = []
    page.on("response", lambda r: mvt.append((r.url, r.status)) if ".mvt" in r.url else None)
    # Searched in the area: a hit in a tile's overhang outside every area's box cannot be labelled.
    page.select_option("#search-area", str(ingested["area"]["id"]))
    _search(page, "water")
    ids = _result_ids(page)
    assert page.get_attribute("body", "data-project") == ""
    assert "No project" in page.inner_text("#project-line")

    # The first thumb starts a project from the search: name and query are the text.
    _thumb(page, ids[0], True)
    project_id = int(page.get_attribute("body", "data-project"))
    project = httpx.get(f"{stack['api']}/v1/projects/{project_id}").json()
    assert project["name"] == "water" and project["query"] == "water"
    assert project["area_ids"] == [ingested["area"]["id"]]
    for wid in ids[1:3]:
        _thumb(page, wid, True)
    for wid in ids[-3:]:
        _thumb(page, wid, False)
    assert _labels(stack, project_id) == {**dict.fromkeys(ids[:3], True), **dict.fromkeys(ids[-3:], False)}
    # The same thumb again removes the label; the other thumb flips it.
    _thumb(page, ids[0], True)
    assert page.get_attribute(f"#results .thumbs[data-window-id='{ids[0]}']", "data-label") == "none"
    assert ids[0] not in _labels(stack, project_id)
    _thumb(page, ids[0], False)
    assert _labels(stack, project_id)[ids[0]] is False
    # Thumbs on the pin's card too: the list follows.
    page.click(f".result[data-id='{ids[3]}'] >> text=Locate on map")
    page.locator(f".maplibregl-popup .card[data-id='{ids[3]}']").wait_for(state="visible")
    _thumb(page, ids[3], True, where=".maplibregl-popup")
    assert (
        page.get_attribute(f"#results .thumbs[data-window-id='{ids[3]}'] .thumb-button--up", "aria-pressed")
        == "true"
    )
    labels = _labels(stack, project_id)
    assert sorted(w for w, p in labels.items() if p) == sorted(ids[1:4])
    assert sorted(w for w, p in labels.items() if not p) == sorted([ids[0], *ids[-3:]])
    page.keyboard.press("Escape")

    # Refine: one click, answered like a search, the same as the API's answer to the same body.
    with page.expect_request(lambda r: r.url.endswith(f"/v1/projects/{project_id}/refine")) as sent:
        page.click("#refine-button")
    page.wait_for_function(
        "() => /refined by its labels/.test(document.getElementById('status').textContent)"
    )
    _wait_results(page)
    api = httpx.post(f"{stack['api']}/v1/projects/{project_id}/refine", json=json.loads(sent.value.post_data))
    assert api.status_code == 200, api.text
    assert _result_ids(page) == [f["properties"]["window_id"] for f in api.json()["features"]]
    assert page.inner_text("#label-counts") == "3 ✓ · 4 ✗"
    _screenshot(page, "test_find_all_labelled_and_refined")

    # Train & detect, followed until done.
    page.click("#tab-project")
    assert page.locator("#label-list .label-item").count() == 7
    page.click("#detect-start")
    page.wait_for_selector("#run-status[data-state=done]", timeout=90_000)
    run_id = int(page.get_attribute("#run-result", "data-run-id"))
    run = httpx.get(f"{stack['api']}/v1/runs/{run_id}").json()
    assert run["state"] == "done" and run["windows_scored"] > 0
    assert f"{run['hits']:,} hit" in page.inner_text("#run-status")
    assert "precision" in page.inner_text("#run-estimate") and "recall" in page.inner_text("#run-estimate")

    # The slider counts live from the histogram: pick a threshold whose count differs.
    hist = httpx.get(f"{stack['api']}/v1/runs/{run_id}/counts", params={"histogram": "true"}).json()[
        "histogram"
    ]
    start = _count_at(hist, run["threshold"])
    assert int(page.get_attribute("#run-count", "data-count")) == start
    # A threshold that keeps some windows but not all, with a count unlike the current one.
    candidates = [t / 1000 for t in range(20, 1000, 10)]
    candidates = [
        t
        for t in candidates
        if 0 < _count_at(hist, t) < run["windows_scored"] and _count_at(hist, t) != start
    ]
    assert candidates, (
        f"the run's scores leave no threshold to move to: {start} hits of {run['windows_scored']}"
    )
    target = min(candidates, key=lambda t: abs(_count_at(hist, t) - run["windows_scored"] / 3))
    page.focus("#run-threshold")
    page.keyboard.press("ArrowRight")  # keyboard steps move it by 0.001
    assert float(page.input_value("#run-threshold")) == pytest.approx(run["threshold"] + 0.001)
    page.evaluate(
        "(t) => { const s = document.getElementById('run-threshold'); s.value = String(t);"
        " s.dispatchEvent(new Event('input', {bubbles: true})); }",
        target,
    )
    expected = _count_at(hist, target)
    assert int(page.get_attribute("#run-count", "data-count")) == expected
    counted = httpx.get(f"{stack['api']}/v1/runs/{run_id}/counts", params={"threshold": target}).json()
    assert counted["counts"][0]["count"] == expected
    assert page.is_enabled("#run-apply")

    # Apply: the run's hits become the count; the tiles of the new threshold are drawn.
    page.click("#run-apply")
    page.wait_for_function(
        "(t) => document.getElementById('run-status').textContent.includes(`at ${t.toFixed(3)}`)", arg=target
    )
    run = httpx.get(f"{stack['api']}/v1/runs/{run_id}").json()
    assert run["threshold"] == pytest.approx(target) and run["hits"] == expected
    assert page.is_disabled("#run-apply")
    _fit(page, AREA_BBOX)
    page.wait_for_function("() => cliprs.map.loaded() && cliprs.map.areTilesLoaded()", timeout=30_000)
    page.wait_for_function("() => cliprs.mapView.renderedDetections().length > 0", timeout=30_000)
    fresh = [status for url, status in mvt if f"/v1/runs/{run_id}/tiles/" in url and f"t={target:.3f}" in url]
    assert fresh and all(status == 200 for status in fresh), mvt
    scores = page.evaluate("() => cliprs.mapView.renderedDetections().map(f => f.properties.score)")
    assert min(scores) >= target - 1e-3
    _screenshot(page, "test_find_all_detections")

    # Exports: each button downloads the run's file.
    total = httpx.get(f"{stack['api']}/v1/runs/{run_id}/polygons", params={"limit": 1}).json()["total"]
    files = {}
    for fmt in ("geojson", "gpkg", "csv"):
        with page.expect_download() as info:
            page.click(f"#export-{fmt}")
        files[fmt] = Path(info.value.path())
        assert info.value.suggested_filename.endswith(f".{fmt}")
    assert len(json.loads(files["geojson"].read_text())["features"]) == total
    assert len(files["csv"].read_text().strip().splitlines()) == total + 1  # header + one row a polygon
    assert files["gpkg"].read_bytes()[:16] == b"SQLite format 3\x00"

    # The detection layer goes with the box, and comes back.
    page.uncheck("#run-layer")
    assert not page.evaluate("() => Boolean(cliprs.map.getSource('run-detections'))")
    page.check("#run-layer")
    assert page.evaluate("() => Boolean(cliprs.map.getSource('run-detections'))")
    assert not _errors(page)
    assert page.problems == []


def test_what_is_this_and_the_heat_map(page, stack: dict) -> None:
    _search(page, "a creek")
    target = _result_ids(page)[1]
    item = page.locator(f".result[data-id='{target}']")
    item.locator(".explain-button").click()
    page.wait_for_selector(f".result[data-id='{target}'] .explain[data-state=done]")
    shown = item.locator(".explain__label").all_inner_texts()
    api = httpx.post(f"{stack['api']}/v1/classify", data={"window_id": str(target)})
    assert api.status_code == 200, api.text
    assert shown == [row["label"] for row in api.json()["labels"][:5]]
    assert item.locator(".explain-button").get_attribute("aria-expanded") == "true"

    item.locator(".heat-button").click()
    page.wait_for_selector("#heatmap-info[data-state=shown]")
    tile = page.evaluate(f"() => cliprs.search.visible.find(f => f.id === {target}).properties.tile")
    heat = httpx.get(
        f"{stack['api']}/v1/tiles/{tile['source']}/{tile['z']}/{tile['x']}/{tile['y']}/heatmap",
        params={"q": "a creek", "grid": 16},
    ).json()
    assert page.get_attribute("#heatmap-info", "data-tile") == f"{tile['z']}/{tile['x']}/{tile['y']}"
    corners = page.evaluate("() => cliprs.map.getSource('heatmap').coordinates")
    w, s, e, n = heat["tile"]["bounds"]
    assert corners == [[w, n], [e, n], [e, s], [w, s]]
    assert f"best window {heat['best']}" in page.inner_text("#heatmap-text")
    page.wait_for_function("() => !cliprs.map.isMoving()")
    _screenshot(page, "test_heat_map")
    page.click("#heatmap-clear")
    assert not page.evaluate("() => Boolean(cliprs.map.getSource('heatmap'))")
    assert not _errors(page) and page.problems == []


def test_find_all_create_a_project_and_see_the_api_errors(page, stack: dict, ingested: dict) -> None:
    """A project made with the form (name typed, the "search in" area); a label the API refuses
    (the project was deleted meanwhile) is shown with the API's own message."""
    page.select_option("#search-area", str(ingested["area"]["id"]))
    _search(page, "farmland")
    wid = _result_ids(page)[0]
    page.click("#tab-project")
    page.fill("#project-name", "Fields")
    page.press("#project-name", "Enter")  # keyboard: the form submits
    page.wait_for_function("() => document.body.dataset.project")
    project_id = int(page.get_attribute("body", "data-project"))
    project = httpx.get(f"{stack['api']}/v1/projects/{project_id}").json()
    assert project == {**project, "name": "Fields", "query": "farmland", "area_ids": [ingested["area"]["id"]]}
    assert page.input_value("#project-select") == str(project_id)
    assert "Project “Fields”: “farmland”" in page.inner_text("#project-summary")
    assert page.is_disabled("#detect-start")  # no labels yet

    assert httpx.delete(f"{stack['api']}/v1/projects/{project_id}").status_code == 200
    page.click("#tab-search")
    page.click(f"#results .thumbs[data-window-id='{wid}'] .thumb-button--up")
    page.wait_for_function(
        "() => /Could not label window/.test(document.getElementById('errors').textContent)"
    )
    refused = httpx.post(
        f"{stack['api']}/v1/projects/{project_id}/labels", json={"window_id": wid, "positive": True}
    )
    assert refused.status_code == 404
    assert f"(HTTP 404) {refused.json()['error']['message']}" in _errors(page)
    assert page.get_attribute(f"#results .thumbs[data-window-id='{wid}']", "data-label") == "none"


def test_the_page_asks_for_a_key_when_the_api_wants_one(page, stack: dict, ingested: dict) -> None:
    """A 401 from the search-api (simulated: this stack runs with access control off) opens the
    key dialog with the API's message; the typed key is kept in sessionStorage and the request
    is sent again with it."""
    seen: list[str | None] = []

    def guard(route) -> None:
        key = route.request.headers.get("x-api-key")
        seen.append(key)
        if route.request.method == "POST" and key != "ck_00000000_test":
            body = {
                "error": {
                    "code": "unauthorized",
                    "message": "POST /v1/projects needs an API key with scope write",
                }
            }
            route.fulfill(status=401, content_type="application/json", body=json.dumps(body))
        else:
            route.continue_()

    page.route(f"{stack['api']}/v1/projects", guard)
    page.click("#tab-project")
    page.fill("#project-name", "Keyed")
    page.press("#project-name", "Enter")
    page.wait_for_selector("#api-key-dialog[open]")
    assert "needs an API key with scope write" in page.inner_text("#api-key-reason")
    page.fill("#api-key-input", "ck_00000000_test")
    page.click("#api-key-ok")
    page.wait_for_function("() => document.body.dataset.project")
    project_id = int(page.get_attribute("body", "data-project"))
    assert httpx.get(f"{stack['api']}/v1/projects/{project_id}").json()["name"] == "Keyed"
    assert page.evaluate("sessionStorage.getItem('cliprs.apiKey')") == "ck_00000000_test"
    assert [k for k in seen if k] and seen[-1] == "ck_00000000_test"
    assert not page.is_visible("#api-key-dialog")
    httpx.delete(f"{stack['api']}/v1/projects/{project_id}")


@pytest.fixture(scope="module", autouse=True)
def _fresh_artifacts() -> None:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
