/**
 * CLIP-RS web page entry point: loads the runtime config, learns what the APIs offer, creates
 * the map, shows the fallback-model banner, and wires the search, "Find all" (projects, labels,
 * detection runs) and area panels.
 *
 * The map is optional: if it cannot be created (no WebGL, bundle missing) the error area says
 * so and search, the result list and the area form keep working.
 */

import { SearchApi, TilerApi, loadConfig, setKeyPrompt } from "./js/api.js";
import { AnalysisController } from "./js/analysis.js";
import { AreaForm } from "./js/area-form.js";
import { MapView } from "./js/map-view.js";
import { ProjectController } from "./js/projects.js";
import { SearchController } from "./js/search.js";
import { ErrorArea, keyPrompter, showFallbackBanner } from "./js/ui.js";

const READINESS_RETRY_MS = 15000;

const els = {
  banner: document.getElementById("fallback-banner"),
  map: document.getElementById("map"),
  mapHint: document.getElementById("map-hint"),
  panel: document.querySelector(".panel"),
  input: document.getElementById("search-input"),
  tabs: [...document.querySelectorAll("[role=tab]")],
};

const errors = new ErrorArea(document.getElementById("errors"));

/** What the page knows; `mapView` stays null until (and unless) the map has loaded. */
const state = {
  /** @type {MapView|null} */
  mapView: null,
  tilerUrl: "",
  areas: [],
  fitted: false,
};

function describe(err) {
  return err instanceof Error ? err.message : String(err);
}

/** Map padding that keeps framed things clear of the floating panel (wide screens only). */
function mapPadding() {
  const mapRect = els.map.getBoundingClientRect();
  const panelRect = els.panel.getBoundingClientRect();
  const floating = panelRect.top < mapRect.bottom && panelRect.right < mapRect.right;
  const left = floating ? panelRect.right - mapRect.left + 30 : 30;
  const roomy = mapRect.width - left > 240;
  return { top: 40, right: 60, bottom: 40, left: roomy ? left : 30 };
}

function showHint(text) {
  els.mapHint.textContent = text ?? "";
  els.mapHint.hidden = !text;
}

/** Tabs: click or arrow keys switch between the search and the areas panel. */
function wireTabs() {
  const select = (tab) => {
    for (const t of els.tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
    }
  };
  for (const tab of els.tabs) {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const i = els.tabs.indexOf(tab);
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = els.tabs[(i + step + els.tabs.length) % els.tabs.length];
      select(next);
      next.focus();
    });
  }
  return (id) => select(document.getElementById(id));
}

/** "/" jumps to the search box (unless typing somewhere already); Escape closes a hit's card. */
function wireShortcuts(selectTab) {
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.mapView?.popup && !state.mapView.drawer.active) {
      state.mapView.closeCard();
      return;
    }
    const typing = event.target instanceof HTMLElement && event.target.matches("input, textarea, select, [contenteditable]");
    if (event.key === "/" && !typing && !event.ctrlKey && !event.metaKey && !event.altKey) {
      event.preventDefault();
      selectTab("tab-search");
      els.input.focus();
      els.input.select();
    }
  });
}

/** Banner when the search-api runs on the generated fallback model; re-checked while not ready. */
async function checkReadiness(api) {
  try {
    const { status, body } = await api.readiness();
    errors.clear("readiness");
    const shown = showFallbackBanner(els.banner, body?.model);
    if (shown) state.mapView?.resize();
    // Tells tests (and anyone debugging) that the readiness answer has been handled.
    document.body.dataset.readiness = status === 200 ? "ready" : "waiting";
    if (status !== 200) {
      errors.set("readiness", `The search API is not ready yet (HTTP ${status}): searches may fail until it is.`);
      setTimeout(() => checkReadiness(api), READINESS_RETRY_MS);
    }
  } catch (err) {
    errors.set("readiness", `Could not check the search API status: ${describe(err)}`);
    setTimeout(() => checkReadiness(api), READINESS_RETRY_MS);
  }
}

async function main() {
  const selectTab = wireTabs();
  wireShortcuts(selectTab);
  let config;
  try {
    config = await loadConfig();
  } catch (err) {
    errors.set("config", `Could not load the page configuration (config.json): ${describe(err)}`);
    return;
  }
  state.tilerUrl = config.tilerUrl;
  const api = new SearchApi(config.searchApiUrl);
  // When the API answers 401/403, ask for a key and keep it for this browser session.
  setKeyPrompt(keyPrompter(document.getElementById("api-key-dialog")));
  const tiler = new TilerApi(config.tilerUrl);
  const getMap = () => state.mapView;
  const search = new SearchController({ api, errors, getMap });
  const analysis = new AnalysisController({ api, errors, search, getMap });
  const projects = new ProjectController({
    api,
    errors,
    search,
    getMap,
    getAreas: () => state.areas,
    tilerUrl: config.tilerUrl,
    selectTab,
  });

  /** Load the areas: map imagery and outlines, the "search in" list, the areas panel. */
  async function loadAreas({ refresh = [] } = {}) {
    try {
      state.areas = await api.areas();
      errors.clear("areas");
    } catch (err) {
      errors.set("areas", `Could not load the areas: ${describe(err)}`);
      return;
    }
    search.setAreas(state.areas);
    areaForm.setAreas(state.areas);
    // The API's list of sources when it has one; else the ones in use plus the demo source.
    const listed = await api.sources().catch(() => null);
    areaForm.setSources(listed ?? [...state.areas.map((a) => a.source), "demo"]);
    state.mapView?.setAreas(state.areas, state.tilerUrl, { refresh });
    if (state.mapView && !state.fitted) {
      state.fitted = true;
      state.mapView.fitToAreas(state.areas);
    }
  }

  const areaForm = new AreaForm({
    api,
    tiler,
    errors,
    getMap,
    onAreasChanged: () => loadAreas(),
    onAreaReady: async (area, job) => {
      await loadAreas({ refresh: [area.id] });
      if (job.state === "done") state.mapView?.fitBbox(area.bbox, { duration: 800 });
    },
    onSearchArea: (area) => {
      selectTab("tab-search");
      search.useArea(area.id);
      state.mapView?.fitBbox(area.bbox, { duration: 800 });
      els.input.focus();
    },
  });

  // Capabilities first (cheap), so the first search already knows about polygons and sources.
  await Promise.all([api.loadCapabilities(), tiler.loadCapabilities()]);
  checkReadiness(api);
  const areasLoaded = loadAreas();

  Promise.resolve()
    .then(() =>
      MapView.create(els.map, {
        padding: mapPadding,
        mapboxToken: config.mapboxToken,
        onError: (key, message) => errors.set(key, message),
        onHitClick: (id) => search.pinClicked(id),
        onHitHover: (id) => search.pinHovered(id),
        onHint: showHint,
      }),
    )
    .then(async (mapView) => {
      state.mapView = mapView;
      await areasLoaded;
      mapView.setAreas(state.areas, state.tilerUrl);
      if (!state.fitted && !search.visible.length) {
        state.fitted = true;
        mapView.fitToAreas(state.areas);
      }
      mapView.showHits(search.visible);
      projects.drawRun();
      document.body.dataset.map = "ready";
    })
    .catch((err) => {
      errors.set("map", `The map could not be shown: ${describe(err)}`);
      document.body.dataset.map = "failed";
    });

  // For the browser console and the browser tests: the page's parts, read-only by convention.
  globalThis.cliprs = {
    api,
    tiler,
    search,
    areaForm,
    projects,
    analysis,
    get map() { return state.mapView?.map ?? null; },
    get mapView() { return state.mapView; },
  };
  await Promise.all([areasLoaded, projects.loadProjects()]);
  document.body.dataset.ready = "true";
  // A linked search (?q=...) runs straight away.
  const linked = new URLSearchParams(window.location.search).get("q");
  if (linked?.trim()) search.run({ kind: "text", q: linked.trim() });
}

main();
