/**
 * Searching: text, image and "find similar" requests, the restriction to an area or a drawn
 * shape, the window quality filters (max cloud, min imagery), the sensitivity slider (minimum
 * score, filtering live), paging, the result list with its pins, and the GeoJSON download.
 */

import { ApiError } from "./api.js";
import { SCORE_NORM, normaliseScores } from "./colors.js";
import { bboxParam, formatBbox } from "./geo.js";
import { hitId } from "./map-view.js";
import { highlightResult, hitCard, hoverResult, renderResults } from "./results.js";
import { downloadJson, setStatus, slug } from "./ui.js";

export const PAGE_SIZE = 20;
const MAX_K = 200;

function describe(err) {
  return err instanceof Error ? err.message : String(err);
}

/** Floor/ceil to 3 decimals, the slider's resolution. */
const floor3 = (v) => Math.floor(v * 1000) / 1000;
const ceil3 = (v) => Math.ceil(v * 1000) / 1000;

/**
 * A quality filter's default as the API reported it, for its "Default" option: "under 50 %"
 * when it sits just below a whole percent (max cloud hides the detector's cloudy windows).
 */
export function defaultShareText(value) {
  const pct = value * 100;
  const whole = Math.round(pct);
  if (Math.abs(pct - whole) > 1e-3) return `${pct.toFixed(1)} %`;
  return `${pct < whole ? "under " : ""}${whole} %`;
}

/**
 * @typedef {{kind: "text", q: string} | {kind: "image", file: File} | {kind: "similar", windowId: number|string}
 *   | {kind: "refine", projectId: number, name: string, q: string|null, areaIds: number[]}} Query
 * @typedef {{kind: "box"|"polygon", bbox: number[], geometry: object}} Shape
 */

export class SearchController {
  /**
   * @param {{
   *   api: import("./api.js").SearchApi,
   *   errors: import("./ui.js").ErrorArea,
   *   getMap: () => import("./map-view.js").MapView|null,
   * }} deps
   */
  constructor({ api, errors, getMap }) {
    this.api = api;
    this.errors = errors;
    this.getMap = getMap;
    this.els = {
      form: document.getElementById("search-form"),
      input: document.getElementById("search-input"),
      area: document.getElementById("search-area"),
      drop: document.getElementById("drop-zone"),
      file: document.getElementById("image-input"),
      drawBox: document.getElementById("restrict-box"),
      drawPolygon: document.getElementById("restrict-polygon"),
      useView: document.getElementById("restrict-view"),
      clearShape: document.getElementById("restrict-clear"),
      restriction: document.getElementById("restriction"),
      maxCloud: document.getElementById("max-cloud"),
      minValid: document.getElementById("min-valid"),
      slider: document.getElementById("min-score"),
      sliderValue: document.getElementById("min-score-value"),
      status: document.getElementById("status"),
      note: document.getElementById("search-note"),
      warning: document.getElementById("search-warning"),
      results: document.getElementById("results"),
      more: document.getElementById("more-results"),
      download: document.getElementById("download-results"),
    };
    /** @type {Query|null} */
    this.query = null;
    /** @type {Shape|null} */
    this.shape = null;
    this.features = [];
    this.visible = [];
    this.k = PAGE_SIZE;
    this.nextCursor = null;
    this.threshold = null;
    this.meta = null;
    this.inFlight = null;
    /** The API's default quality filters, learned from the first answer that applied them. */
    this.qualityDefaults = { maxCloud: null, minValid: null };
    /** Labelling and analysis handlers of each hit (thumbs, "What is this?", heat map), set by the page. */
    this.extraHandlers = {};
    this.wire();
  }

  wire() {
    const els = this.els;
    els.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const q = els.input.value.trim();
      if (!q) {
        this.errors.set("search", "Type what to look for, e.g. “a harbour with boats”, or drop an image below.");
        els.input.focus();
        return;
      }
      this.run({ kind: "text", q });
    });
    els.file.addEventListener("change", () => {
      const file = els.file.files?.[0];
      if (file) this.searchImage(file);
      els.file.value = "";
    });
    for (const type of ["dragenter", "dragover"]) {
      els.drop.addEventListener(type, (event) => {
        event.preventDefault();
        els.drop.classList.add("drop--over");
      });
    }
    for (const type of ["dragleave", "drop"]) {
      els.drop.addEventListener(type, () => els.drop.classList.remove("drop--over"));
    }
    els.drop.addEventListener("drop", (event) => {
      event.preventDefault();
      const file = event.dataTransfer?.files?.[0];
      if (file) this.searchImage(file);
      else this.errors.set("search", "Drop an image file (PNG, JPEG or WebP) to search with it.");
    });
    els.slider.addEventListener("input", () => {
      this.threshold = Number(els.slider.value);
      this.applyThreshold();
    });
    els.area.addEventListener("change", () => this.rerun());
    els.maxCloud.addEventListener("change", () => this.rerun());
    els.minValid.addEventListener("change", () => this.rerun());
    els.drawBox.addEventListener("click", () => this.drawShape("box", els.drawBox));
    els.drawPolygon.addEventListener("click", () => this.drawShape("polygon", els.drawPolygon));
    els.useView.addEventListener("click", () => {
      const map = this.getMap();
      if (!map) return;
      const bbox = map.viewBbox();
      this.setShape({ kind: "box", bbox, geometry: { type: "Polygon", coordinates: [[[bbox[0], bbox[1]], [bbox[2], bbox[1]], [bbox[2], bbox[3]], [bbox[0], bbox[3]], [bbox[0], bbox[1]]]] } });
    });
    els.clearShape.addEventListener("click", () => this.setShape(null));
    els.more.addEventListener("click", () => this.loadMore());
    els.download.addEventListener("click", () => this.download());
    this.renderRestriction();
  }

  /** Offer the areas in the "search in" list (keeping the current choice when it still exists). */
  setAreas(areas) {
    const select = this.els.area;
    const current = select.value;
    const options = [new Option("All areas", "")];
    for (const area of areas) options.push(new Option(`${area.name}${area.status === "ready" ? "" : ` (${area.status})`}`, String(area.id)));
    select.replaceChildren(...options);
    select.value = areas.some((a) => String(a.id) === current) ? current : "";
  }

  /** Search only in this area from now on (and re-run the current search). */
  useArea(areaId) {
    this.els.area.value = String(areaId);
    this.rerun();
  }

  async drawShape(kind, button) {
    const map = this.getMap();
    if (!map) {
      this.errors.set("search", "The map is not available, so no shape can be drawn.");
      return;
    }
    button.setAttribute("aria-pressed", "true");
    const shape = await map.draw(kind, "search");
    button.setAttribute("aria-pressed", "false");
    if (shape) this.setShape(shape);
    button.focus();
  }

  /** Restrict searches to a drawn shape (or lift it with null) and re-run the current search. */
  setShape(shape) {
    this.shape = shape;
    this.getMap()?.setShape("search", shape);
    this.renderRestriction();
    this.rerun();
  }

  renderRestriction() {
    const { restriction, clearShape } = this.els;
    clearShape.disabled = !this.shape;
    if (!this.shape) {
      restriction.textContent = "Searching everywhere.";
      return;
    }
    const what = this.shape.kind === "polygon" ? `a polygon of ${this.shape.geometry.coordinates[0].length - 1} corners` : "a box";
    restriction.textContent = `Searching only inside ${what}: ${formatBbox(this.shape.bbox)}.`;
  }

  searchImage(file) {
    if (file.type && !file.type.startsWith("image/")) {
      this.errors.set("search", `“${file.name}” is not an image (${file.type}): choose a PNG, JPEG or WebP picture.`);
      return;
    }
    this.run({ kind: "image", file });
  }

  /** Add (merge) handlers to every hit's list item and card (thumbs, "What is this?", heat map) and redraw. */
  setResultHandlers(handlers) {
    this.extraHandlers = { ...this.extraHandlers, ...handlers };
    if (this.query) this.applyThreshold();
  }

  /** The text behind the current results (a text search's or a refined project's), or null. */
  currentText() {
    if (this.query?.kind === "text") return this.query.q;
    if (this.query?.kind === "refine") return this.query.q;
    const typed = this.els.input.value.trim();
    return typed || null;
  }

  /** The chosen area of the "search in" list, or null for all areas. */
  areaFilter() {
    return this.els.area.value ? Number(this.els.area.value) : null;
  }

  /** Find windows similar to an indexed one. */
  similar(windowId) {
    this.run({ kind: "similar", windowId });
  }

  rerun() {
    if (this.query) this.run(this.query);
  }

  loadMore() {
    if (!this.query) return;
    if (this.nextCursor) this.run(this.query, { cursor: this.nextCursor });
    else this.run(this.query, { k: Math.min(MAX_K, this.k + PAGE_SIZE), keepThreshold: true });
  }

  /** A one-line description of a query, for the status line and the download. */
  label(query) {
    if (query.kind === "text") return `“${query.q}”`;
    if (query.kind === "image") return `the image “${query.file.name || "upload"}”`;
    if (query.kind === "refine") return `project “${query.name}” refined by its labels`;
    return `windows similar to window ${query.windowId}`;
  }

  /**
   * The quality filters to send: the chosen values, or the API's defaults once an answer has
   * reported them (null: not known yet, so the API applies its defaults unasked).
   */
  quality() {
    const pick = (select, fallback) => (select.value === "" ? fallback : Number(select.value));
    return {
      maxCloud: pick(this.els.maxCloud, this.qualityDefaults.maxCloud),
      minValid: pick(this.els.minValid, this.qualityDefaults.minValid),
    };
  }

  /** Learn the API's defaults from an answer to a search that left them to it. */
  learnQualityDefaults(filter, sent) {
    const learn = (key, select, reported) => {
      if (select.value !== "" || sent[key] !== null || !Number.isFinite(reported)) return;
      this.qualityDefaults[key] = reported;
      select.options[0].textContent = `Default (${defaultShareText(reported)})`;
    };
    learn("maxCloud", this.els.maxCloud, filter?.max_cloud);
    learn("minValid", this.els.minValid, filter?.min_valid);
  }

  /**
   * Send the query with the current filters. A polygon goes in the JSON body of POST /v1/search
   * where the API has it; elsewhere the search falls back to the polygon's box and says so.
   */
  async request(query, { k, cursor, signal, quality }) {
    const areaId = this.els.area.value || null;
    const shape = this.shape;
    const caps = this.api.capabilities;
    if (query.kind === "refine") {
      // Refine searches the project's areas: the area filter narrows only to one of them.
      const area = areaId !== null && query.areaIds.includes(Number(areaId)) ? areaId : null;
      const bbox = shape ? bboxParam(shape.bbox) : null;
      const note = shape?.kind === "polygon" ? "Refine filters by box: the polygon's bounding box was searched." : null;
      return { body: await this.api.refine({ projectId: query.projectId, k, areaId: area, bbox, cursor, ...quality, signal }), note };
    }
    if (shape?.kind === "polygon") {
      const polygon = shape.geometry;
      if (query.kind === "image" && caps.polygonImage) {
        return { body: await this.api.searchImage({ file: query.file, k, areaId, polygon, cursor, ...quality, signal }), note: null };
      }
      // null: the API's abilities are unknown, so try and fall back on 404/405.
      const viaBody = query.kind === "text" ? caps.polygonSearch !== false : query.kind === "similar" && caps.polygonSimilar;
      if (viaBody) {
        try {
          const args = query.kind === "text" ? { q: query.q } : { windowId: query.windowId };
          return { body: await this.api.searchPolygon({ ...args, k, areaId, polygon, cursor, ...quality, signal }), note: null };
        } catch (err) {
          if (!(err instanceof ApiError && [404, 405].includes(err.status))) throw err;
        }
      }
    }
    const note =
      shape?.kind === "polygon"
        ? "This search API cannot filter this search by polygon, so the polygon's bounding box was searched instead."
        : null;
    const params = { k, areaId, bbox: shape ? bboxParam(shape.bbox) : null, cursor, ...quality, signal };
    if (query.kind === "text") return { body: await this.api.search({ ...params, q: query.q }), note };
    if (query.kind === "image") return { body: await this.api.searchImage({ ...params, file: query.file }), note };
    return { body: await this.api.similar({ ...params, windowId: query.windowId }), note };
  }

  /** Run a query; `cursor` appends the next page, otherwise the results are replaced. */
  async run(query, { k = PAGE_SIZE, cursor = null, keepThreshold = false } = {}) {
    const els = this.els;
    const append = Boolean(cursor);
    this.getMap()?.drawer?.cancel();
    if (query.kind === "text") {
      els.input.value = query.q;
      rememberQuery(query.q);
    }
    this.inFlight?.abort();
    const controller = new AbortController();
    this.inFlight = controller;
    els.results.setAttribute("aria-busy", "true");
    setStatus(els.status, `Searching for ${this.label(query)}…`);
    const started = performance.now();
    try {
      const quality = this.quality();
      const { body, note } = await this.request(query, { k: append ? this.k : k, cursor, signal: controller.signal, quality });
      if (this.inFlight !== controller) return;
      this.learnQualityDefaults(body.filter, quality);
      this.errors.clear("search");
      const roundTrip = performance.now() - started;
      const incoming = [...body.features].sort((a, b) => (a.properties?.rank ?? 0) - (b.properties?.rank ?? 0));
      if (append) {
        const seen = new Set(this.features.map(hitId));
        this.features = normaliseScores([...this.features, ...incoming.filter((f) => !seen.has(hitId(f)))]);
      } else {
        this.k = k;
        this.features = normaliseScores(incoming);
      }
      this.query = query;
      this.nextCursor = typeof body.next_cursor === "string" && body.next_cursor ? body.next_cursor : null;
      this.meta = {
        tookMs: Number(body.took_ms),
        roundTripMs: roundTrip,
        model: body.model,
        indexVersion: body.index_version,
        confidence: typeof body.confidence?.level === "string" ? body.confidence.level : null,
      };
      els.note.textContent = note ?? "";
      els.note.hidden = !note;
      // The API's own word on the answer, e.g. that the query seems to mean nothing to the model.
      const warning = typeof body.warning === "string" ? body.warning : "";
      els.warning.textContent = warning ? `Low confidence: ${warning}.` : "";
      els.warning.hidden = !warning;
      this.resetSlider(append || keepThreshold);
      this.applyThreshold({ fly: !append });
    } catch (err) {
      if (err?.name === "AbortError" || this.inFlight !== controller) return;
      const prefix = err instanceof ApiError && err.status ? `Search failed (HTTP ${err.status})` : "Search failed";
      this.errors.set("search", `${prefix}: ${describe(err)}`);
      if (!append) {
        this.features = [];
        this.query = null;
        els.warning.hidden = true;
        els.note.hidden = true;
        this.applyThreshold();
        setStatus(els.status, "");
      }
    } finally {
      if (this.inFlight === controller) {
        this.inFlight = null;
        els.results.removeAttribute("aria-busy");
      }
    }
  }

  /** Fit the slider to the scores at hand: from the lowest (everything shown) to the best. */
  resetSlider(keep) {
    const { slider } = this.els;
    const scores = this.features.map((f) => Number(f.properties?.score)).filter(Number.isFinite);
    if (!scores.length) {
      slider.disabled = true;
      this.threshold = null;
      return;
    }
    const lo = floor3(Math.min(...scores));
    const hi = floor3(Math.max(...scores));
    // A slider left at its lowest keeps showing everything, new pages included.
    const atLowest = this.threshold === null || this.threshold <= Number(slider.min);
    slider.min = String(lo);
    slider.max = String(Math.max(hi, lo + 0.001));
    slider.step = "0.001";
    slider.disabled = false;
    const value = keep && !atLowest ? Math.min(Math.max(this.threshold, lo), hi) : lo;
    slider.value = String(value);
    this.threshold = Number(slider.value);
  }

  /** Show only the hits at or above the minimum score: list, pins, count; fly to the best. */
  applyThreshold({ fly = false } = {}) {
    const els = this.els;
    const min = this.threshold ?? -Infinity;
    // 1e-9: the slider holds 3 decimals, so a score equal to the floor must pass.
    this.visible = this.features.filter((f) => Number(f.properties?.score) >= min - 1e-9);
    const handlers = {
      onLocate: (id, options) => this.locate(id, { card: true, ...options }),
      onSimilar: (id) => this.similar(id),
      onHover: (id) => this.getMap()?.hoverHit(id),
      ...this.extraHandlers,
    };
    renderResults(els.results, this.visible, handlers);
    this.getMap()?.showHits(this.visible);
    els.sliderValue.textContent = this.threshold === null ? "–" : this.threshold.toFixed(3);
    els.slider.setAttribute("aria-valuetext", this.threshold === null ? "no results" : `minimum score ${this.threshold.toFixed(3)}, ${this.visible.length} results shown`);
    els.download.disabled = !this.visible.length;
    const canGrow = this.nextCursor || (this.features.length >= this.k && this.k < MAX_K);
    els.more.hidden = !this.query || !canGrow;
    this.renderStatus();
    // The best hit: selected and flown to, without scrolling the panel away from the search box.
    if (fly && this.visible.length) this.locate(hitId(this.visible[0]), { card: false, scroll: false });
  }

  renderStatus() {
    const { status } = this.els;
    if (!this.query) return;
    const total = this.features.length;
    const shown = this.visible.length;
    const label = this.label(this.query);
    if (!total) {
      setStatus(status, `No results for ${label}${this.shape ? " inside the drawn shape" : ""}.`);
      return;
    }
    const count = shown === total ? `${total} result${total === 1 ? "" : "s"}` : `${shown} of ${total} results`;
    const server = Number.isFinite(this.meta?.tookMs) ? ` (server ${Math.round(this.meta.tookMs)} ms)` : "";
    const confidence = this.meta?.confidence && this.meta.confidence !== "none" ? ` Confidence: ${this.meta.confidence}.` : "";
    setStatus(status, `${count} for ${label} in ${Math.round(this.meta?.roundTripMs ?? 0)} ms${server}.${confidence}`);
  }

  /** Select a hit: highlight it in the list and on the map, fly to it, optionally open its card. */
  locate(id, { card = true, fly = true, scroll = true } = {}) {
    const feature = this.visible.find((f) => hitId(f) === id) ?? this.features.find((f) => hitId(f) === id);
    if (!feature) return;
    highlightResult(this.els.results, id, { scroll });
    const map = this.getMap();
    if (!map) return;
    map.selectHit(id);
    if (fly) map.flyToHit(feature);
    if (card) map.openCard(feature, hitCard(feature, { onSimilar: (wid) => this.similar(wid), ...this.extraHandlers }));
  }

  /** A pin was clicked: its card opens where it is, and its result is highlighted. */
  pinClicked(id) {
    this.locate(id, { card: true, fly: false });
  }

  /** The pointer is over a pin: mark its result. */
  pinHovered(id) {
    hoverResult(this.els.results, id);
  }

  /** The shown results as a GeoJSON FeatureCollection file. */
  download() {
    if (!this.visible.length || !this.query) return;
    const kind = this.query.kind;
    const query =
      kind === "text" ? { text: this.query.q } : kind === "image" ? { image: this.query.file.name } : kind === "refine" ? { refine: this.query.projectId, text: this.query.q } : { window_id: this.query.windowId };
    const features = this.visible.map((f) => {
      const { [SCORE_NORM]: _, ...properties } = f.properties ?? {};
      return { type: "Feature", id: hitId(f), geometry: f.geometry, properties };
    });
    const data = {
      type: "FeatureCollection",
      features,
      query,
      min_score: this.threshold,
      max_cloud: this.quality().maxCloud,
      min_valid: this.quality().minValid,
      area_id: this.els.area.value ? Number(this.els.area.value) : null,
      restricted_to: this.shape ? this.shape.geometry : null,
      model: this.meta?.model ?? null,
      index_version: this.meta?.indexVersion ?? null,
      exported_at: new Date().toISOString(),
    };
    const name = kind === "text" ? this.query.q : kind === "image" ? `image-${this.query.file.name}` : kind === "refine" ? `refined-${this.query.name}` : `similar-${this.query.windowId}`;
    downloadJson(data, `cliprs-${slug(name)}.geojson`);
  }
}

/** Keep `?q=` in the address bar in step with the last text search, so it can be linked. */
function rememberQuery(query) {
  const url = new URL(window.location.href);
  url.searchParams.set("q", query);
  window.history.replaceState(null, "", url);
}
