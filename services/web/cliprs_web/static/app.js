/**
 * CLIP-RS web page entry point: loads the runtime config, draws the indexed areas on the map,
 * checks which model the search-api runs on, and wires the search box to the result list.
 *
 * The map is optional: if it cannot be created (no WebGL, bundle missing) the error area says
 * so and search with its result list keeps working.
 */

import { ApiError, SearchApi, loadConfig } from "./js/api.js";
import { normaliseScores } from "./js/colors.js";
import { MapView, hitId } from "./js/map-view.js";
import { highlightResult, renderResults } from "./js/results.js";
import { ErrorArea, setStatus, showFallbackBanner } from "./js/ui.js";

const SEARCH_K = 20;

const els = {
  banner: document.getElementById("fallback-banner"),
  map: document.getElementById("map"),
  panel: document.querySelector(".panel"),
  form: document.getElementById("search-form"),
  input: document.getElementById("search-input"),
  errors: document.getElementById("errors"),
  status: document.getElementById("status"),
  results: document.getElementById("results"),
};

const errors = new ErrorArea(els.errors);

/** What the page knows; `mapView` stays null until (and unless) the map has loaded. */
const state = {
  /** @type {MapView|null} */
  mapView: null,
  tilerUrl: "",
  areas: [],
  hits: [],
};

function describe(err) {
  return err instanceof Error ? err.message : String(err);
}

/** Map padding that keeps framed things clear of the floating panel. */
function mapPadding() {
  const panelRight = els.panel.getBoundingClientRect().right - els.map.getBoundingClientRect().left;
  const wide = els.map.clientWidth - panelRight > 300;
  return { top: 40, right: 60, bottom: 40, left: wide ? panelRight + 40 : 40 };
}

/** Select a hit: highlight it in the list and on the map, and optionally fly to it. */
function selectHit(id, { fly = true } = {}) {
  const feature = state.hits.find((f) => hitId(f) === id);
  if (!feature) return;
  highlightResult(els.results, id);
  state.mapView?.selectHit(id);
  if (fly) state.mapView?.flyToHit(feature);
}

/** Draw what is already known (areas, hits) once the map is there. */
function drawAll() {
  const mapView = state.mapView;
  if (!mapView) return;
  mapView.setAreas(state.areas, state.tilerUrl);
  mapView.showHits(state.hits);
  if (!state.hits.length) mapView.fitToAreas(state.areas);
}

/** Create the map in the background. */
async function startMap() {
  try {
    state.mapView = await MapView.create(els.map, {
      padding: mapPadding,
      onError: (key, message) => errors.set(key, message),
      onHitClick: (id) => selectHit(id, { fly: false }),
    });
    drawAll();
  } catch (err) {
    errors.set("map", `The map could not be shown: ${describe(err)}`);
  }
}

/** Banner when the search-api runs on the generated fallback model. */
async function checkReadiness(api) {
  try {
    const { status, body } = await api.readiness();
    errors.clear("readiness");
    showFallbackBanner(els.banner, body?.model);
    if (status !== 200) {
      errors.set("readiness", `The search API is not ready yet (HTTP ${status}); searches may fail.`);
    }
  } catch (err) {
    errors.set("readiness", `Could not check the search API status: ${describe(err)}`);
  }
}

/** Load the indexed areas; the map shows their imagery and fits to them. */
async function loadAreas(api) {
  try {
    state.areas = await api.areas();
    errors.clear("areas");
    if (!state.areas.length && !state.hits.length) setStatus(els.status, "No area has been indexed yet.");
  } catch (err) {
    state.areas = [];
    errors.set("areas", `Could not load the indexed areas: ${describe(err)}`);
  }
  drawAll();
}

/** Show a search answer: list, pins and footprints, and fly to the best hit. */
function showSearchResults(query, collection) {
  state.hits = normaliseScores(
    [...collection.features].sort((a, b) => (a.properties?.rank ?? 0) - (b.properties?.rank ?? 0)),
  );
  renderResults(els.results, state.hits, { onSelect: (id) => selectHit(id) });
  const took = Number.isFinite(collection.took_ms) ? ` in ${Math.round(collection.took_ms)} ms` : "";
  const n = state.hits.length;
  setStatus(els.status, n ? `${n} result${n === 1 ? "" : "s"} for “${query}”${took}.` : `No results for “${query}”.`);
  state.mapView?.showHits(state.hits);
  if (n) selectHit(hitId(state.hits[0]));
}

/** Keep `?q=` in the address bar in step with the last search, so a search can be linked. */
function rememberQuery(query) {
  const url = new URL(window.location.href);
  url.searchParams.set("q", query);
  window.history.replaceState(null, "", url);
}

/** Wire the search form: submit (Enter or the button) → GET /v1/search. */
function wireSearch(api) {
  let inFlight = null;

  els.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const query = els.input.value.trim();
    if (!query) {
      errors.set("search", "Type what to look for, e.g. “a harbour with boats”.");
      els.input.focus();
      return;
    }
    rememberQuery(query);
    inFlight?.abort();
    const controller = new AbortController();
    inFlight = controller;
    els.results.setAttribute("aria-busy", "true");
    setStatus(els.status, `Searching for “${query}”…`);
    try {
      const collection = await api.search(query, { k: SEARCH_K, signal: controller.signal });
      errors.clear("search");
      showSearchResults(query, collection);
    } catch (err) {
      if (err?.name === "AbortError") return;
      state.hits = [];
      renderResults(els.results, [], { onSelect: () => {} });
      state.mapView?.showHits([]);
      const prefix = err instanceof ApiError && err.status ? `Search failed (HTTP ${err.status})` : "Search failed";
      errors.set("search", `${prefix}: ${describe(err)}`);
      setStatus(els.status, "");
    } finally {
      if (inFlight === controller) {
        inFlight = null;
        els.results.removeAttribute("aria-busy");
      }
    }
  });
}

async function main() {
  let config;
  try {
    config = await loadConfig();
  } catch (err) {
    errors.set("config", `Could not load the page configuration (config.json): ${describe(err)}`);
    return;
  }
  state.tilerUrl = config.tilerUrl;
  const api = new SearchApi(config.searchApiUrl);
  wireSearch(api);
  startMap();
  checkReadiness(api);
  loadAreas(api);
  // A linked search (?q=...) runs straight away.
  const linked = new URLSearchParams(window.location.search).get("q");
  if (linked?.trim()) {
    els.input.value = linked;
    els.form.requestSubmit();
  }
}

main();
