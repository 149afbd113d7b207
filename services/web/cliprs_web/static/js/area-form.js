/**
 * The "new area" form (box, zooms, source, tile count before starting), the followed ingest
 * jobs with their live progress, and the list of known areas.
 */

import { ApiError, perZoomProgress } from "./api.js";
import { bboxAreaKm2, formatBbox, parseBbox, roundCoord } from "./geo.js";
import { bboxProblem, planSize } from "./tiles.js";
import { debounce } from "./ui.js";

const POLL_MS = 1000;
const STATE_LABELS = {
  queued: "Queued: waiting for the tiler",
  fetching: "Fetching tiles",
  embedding: "Embedding windows",
  indexing: "Indexing",
  done: "Searchable",
  done_with_failures: "Searchable, some tiles failed",
  failed: "Failed",
};
const FINISHED = new Set(["done", "failed"]);

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined && text !== null) el.textContent = text;
  return el;
}

function describe(err) {
  return err instanceof Error ? err.message : String(err);
}

/** A labelled progress bar row: "label  [=====   ]  3 / 16". */
function barRow(label, value, max, detail) {
  const row = element("div", "bar");
  const name = element("span", "bar__label", label);
  const bar = element("progress", "bar__meter");
  bar.max = Math.max(1, max);
  bar.value = Math.min(value, bar.max);
  bar.setAttribute("aria-label", `${label}: ${detail ?? `${value} of ${max}`}`);
  row.append(name, bar, element("span", "bar__count", detail ?? `${value} / ${max}`));
  return row;
}

const STAGE_ORDER = ["decode", "resize", "encode", "write"];

/** The embedder's seconds per stage: "decode 1.2 s · resize 0.4 s · encode 3.1 s · write 0.8 s". */
export function formatStages(stageSeconds) {
  const entries = Object.entries(stageSeconds ?? {}).filter(([, s]) => Number.isFinite(Number(s)));
  const rank = (name) => (STAGE_ORDER.includes(name) ? STAGE_ORDER.indexOf(name) : STAGE_ORDER.length);
  entries.sort(([a], [b]) => rank(a) - rank(b) || a.localeCompare(b));
  return entries.map(([name, s]) => `${name} ${Number(s).toFixed(1)} s`).join(" · ");
}

/** "z10–14" or "z12, 14". */
export function formatZooms(zooms) {
  const z = [...zooms].sort((a, b) => a - b);
  if (!z.length) return "no zoom";
  const contiguous = z.every((v, i) => i === 0 || v === z[i - 1] + 1);
  return contiguous && z.length > 2 ? `z${z[0]}–${z[z.length - 1]}` : `z${z.join(", ")}`;
}

export class AreaForm {
  /**
   * @param {{
   *   api: import("./api.js").SearchApi,
   *   tiler: import("./api.js").TilerApi,
   *   errors: import("./ui.js").ErrorArea,
   *   getMap: () => import("./map-view.js").MapView|null,
   *   onAreasChanged: () => void,
   *   onAreaReady: (area: object, job: object) => void,
   *   onSearchArea: (area: object) => void,
   * }} deps
   */
  constructor(deps) {
    Object.assign(this, deps);
    this.els = {
      form: document.getElementById("area-form"),
      name: document.getElementById("area-name"),
      bbox: document.getElementById("area-bbox"),
      draw: document.getElementById("area-draw"),
      useView: document.getElementById("area-use-view"),
      zooms: document.getElementById("area-zooms"),
      source: document.getElementById("area-source"),
      sourceOptions: document.getElementById("area-source-options"),
      plan: document.getElementById("area-plan"),
      start: document.getElementById("area-start"),
      jobs: document.getElementById("jobs"),
      list: document.getElementById("area-list"),
    };
    /** @type {Map<number, {area: object, job: object|null, zooms: Array, el: HTMLElement, timer: number|null}>} */
    this.followed = new Map();
    this.planRequest = null;
    this.askTiler = debounce(() => this.refreshServerPlan(), 250);

    const { form, bbox, draw, useView, zooms } = this.els;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.start();
    });
    bbox.addEventListener("input", () => this.boxChanged());
    zooms.addEventListener("change", () => this.updatePlan());
    draw.addEventListener("click", () => this.drawBox());
    useView.addEventListener("click", () => {
      const map = this.getMap();
      if (map) this.setBox(map.viewBbox());
    });
    this.updatePlan();
  }

  /** Offer these tile sources (the field still takes any name the platform is configured with). */
  setSources(names) {
    const unique = [...new Set(names)].filter(Boolean);
    this.els.sourceOptions.replaceChildren(...unique.map((name) => Object.assign(document.createElement("option"), { value: name })));
    if (!this.els.source.value && unique.length) this.els.source.value = unique[0];
  }

  /** The box in the form, or null. */
  bbox() {
    return parseBbox(this.els.bbox.value);
  }

  zooms() {
    return [...this.els.zooms.querySelectorAll("input[type=checkbox]:checked")].map((box) => Number(box.value));
  }

  setBox(bbox) {
    this.els.bbox.value = bbox.map((v) => roundCoord(v, 5)).join(", ");
    this.boxChanged();
  }

  boxChanged() {
    const bbox = this.bbox();
    const ok = bbox && !bboxProblem(bbox);
    this.getMap()?.setShape("area", ok ? { geometry: { type: "Polygon", coordinates: [[[bbox[0], bbox[1]], [bbox[2], bbox[1]], [bbox[2], bbox[3]], [bbox[0], bbox[3]], [bbox[0], bbox[1]]]] } } : null);
    this.updatePlan();
  }

  async drawBox() {
    const map = this.getMap();
    if (!map) {
      this.errors.set("area", "The map is not available: type the box as west, south, east, north instead.");
      return;
    }
    this.els.draw.setAttribute("aria-pressed", "true");
    const shape = await map.draw("box", "area");
    this.els.draw.setAttribute("aria-pressed", "false");
    if (shape) this.setBox(shape.bbox);
    this.els.draw.focus();
  }

  /** Why the form cannot start yet, or null. */
  problem() {
    const bbox = this.bbox();
    if (!this.els.bbox.value.trim()) return "Draw a box on the map (or use the map view) to choose the area.";
    const boxProblem = bboxProblem(bbox);
    if (boxProblem) return boxProblem;
    if (!this.zooms().length) return "Pick at least one zoom level.";
    return null;
  }

  /** Tile count right away from the tile math; the tiler's plan (with its limit) follows. */
  updatePlan() {
    const out = this.els.plan;
    const problem = this.problem();
    out.classList.remove("plan--over");
    if (problem) {
      out.textContent = problem;
      out.dataset.tiles = "";
      return;
    }
    const bbox = this.bbox();
    const { perZoom, total } = planSize(bbox, this.zooms());
    this.showPlan(total, perZoom, bbox, null);
    this.askTiler();
  }

  showPlan(total, perZoom, bbox, server) {
    const out = this.els.plan;
    const parts = perZoom.map(({ z, tiles }) => `z${z}: ${tiles.toLocaleString()}`).join(" · ");
    const km2 = bboxAreaKm2(bbox);
    let text = `${total.toLocaleString()} tile${total === 1 ? "" : "s"} to fetch (${parts}) for ${km2 < 10 ? km2.toFixed(2) : Math.round(km2)} km².`;
    if (server?.limit) {
      text += server.withinLimit === false ? "" : ` Within the limit of ${server.limit.toLocaleString()}.`;
    }
    out.textContent = text;
    out.dataset.tiles = String(total);
    if (server?.withinLimit === false) {
      out.classList.add("plan--over");
      out.append(element("strong", "plan__over", ` ${server.message ?? `Above the limit of ${server.limit}: draw a smaller box or drop the highest zoom.`}`));
    }
  }

  async refreshServerPlan() {
    if (this.problem()) return;
    const bbox = this.bbox();
    const zooms = this.zooms();
    this.planRequest?.abort();
    const controller = new AbortController();
    this.planRequest = controller;
    try {
      const plan = await this.tiler.plan({ bbox, zooms, signal: controller.signal });
      if (plan && this.planRequest === controller && Number.isFinite(plan.total)) {
        this.showPlan(plan.total, plan.perZoom.length ? plan.perZoom : planSize(bbox, zooms).perZoom, bbox, plan);
      }
    } catch {
      // The local count already shows; the API checks the limit again when the area starts.
    }
  }

  async start() {
    const problem = this.problem();
    const name = this.els.name.value.trim();
    const source = this.els.source.value.trim();
    if (problem || !name || !source) {
      this.errors.set("area", problem ?? (!name ? "Give the area a name." : "Give the tile source's name (e.g. demo)."));
      (problem ? this.els.bbox : !name ? this.els.name : this.els.source).focus();
      return;
    }
    this.els.start.disabled = true;
    try {
      const { area, job } = await this.api.createArea({ name, bbox: this.bbox(), zooms: this.zooms(), source });
      this.errors.clear("area");
      this.getMap()?.setShape("area", null);
      this.els.bbox.value = "";
      this.els.name.value = "";
      this.updatePlan();
      this.onAreasChanged();
      this.follow(area, job);
      this.followed.get(job.id)?.el.scrollIntoView({ block: "nearest" });
    } catch (err) {
      const status = err instanceof ApiError && err.status ? ` (HTTP ${err.status})` : "";
      this.errors.set("area", `The area was not started${status}: ${describe(err)}`);
    } finally {
      this.els.start.disabled = false;
    }
  }

  /** Show the areas, and follow every job that is still running (e.g. after a page reload). */
  setAreas(areas) {
    const items = areas.map((area) => {
      const item = element("li", "area-item");
      item.dataset.areaId = String(area.id);
      const head = element("div", "area-item__head");
      head.append(element("strong", null, area.name), element("span", `badge badge--${area.status}`, area.status));
      const meta = element("div", "area-item__meta", `${formatZooms(area.zooms ?? [])} · source ${area.source} · ${formatBbox(area.bbox)}`);
      const actions = element("div", "area-item__actions");
      const show = element("button", "small-button", "Show on map");
      show.type = "button";
      show.addEventListener("click", () => this.getMap()?.fitBbox(area.bbox, { duration: 800 }));
      const search = element("button", "small-button", "Search here");
      search.type = "button";
      search.addEventListener("click", () => this.onSearchArea(area));
      actions.append(show, search);
      if (this.api.capabilities.deleteArea && area.status !== "deleting") {
        const remove = element("button", "small-button small-button--danger", "Delete");
        remove.type = "button";
        remove.setAttribute("aria-label", `Delete the area ${area.name}`);
        remove.addEventListener("click", () => this.deleteArea(area, remove));
        actions.append(remove);
      }
      item.append(head, meta, actions);
      return item;
    });
    this.els.list.replaceChildren(...items);
    if (!areas.length) this.els.list.append(element("li", "muted", "No area yet: draw one above."));
    for (const area of areas) {
      if (area.job && !FINISHED.has(area.job.state) && !this.followed.has(area.job.id)) this.follow(area, area.job);
    }
  }

  /** Delete an area after asking, then wait until the API no longer knows it. */
  async deleteArea(area, button) {
    if (!window.confirm(`Delete the area “${area.name}”? Its windows leave the index and cannot be searched any more.`)) return;
    button.disabled = true;
    button.textContent = "Deleting…";
    try {
      await this.api.deleteArea(area.id);
      this.errors.clear(`delete-${area.id}`);
      for (let i = 0; i < 300; i += 1) {
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        try {
          await this.api.area(area.id);
        } catch (err) {
          if (err instanceof ApiError && err.status === 404) break;
          throw err;
        }
      }
    } catch (err) {
      this.errors.set(`delete-${area.id}`, `The area “${area.name}” was not deleted: ${describe(err)}`);
    }
    this.onAreasChanged(); // reload the areas either way
  }

  /** Poll a job until it is done or failed, showing its progress. */
  follow(area, job) {
    const el = element("li", "job");
    el.dataset.jobId = String(job.id);
    this.els.jobs.prepend(el);
    const entry = { area, job, zooms: [], el, timer: null, error: null };
    this.followed.set(job.id, entry);
    this.renderJob(entry);
    this.poll(entry);
  }

  async poll(entry) {
    try {
      const [job, progress] = await Promise.all([
        this.api.job(entry.job.id),
        this.tiler.progress(entry.job.id).catch(() => null),
      ]);
      entry.job = job;
      entry.error = null;
      const own = perZoomProgress(job);
      entry.zooms = own.length ? own : (progress?.zooms ?? entry.zooms);
      entry.failures = progress?.failures ?? [];
    } catch (err) {
      entry.error = `progress unavailable: ${describe(err)} (retrying)`;
    }
    this.renderJob(entry);
    const state = entry.job.state;
    if (state === "done") {
      this.errors.clear(`job-${entry.job.id}`);
      this.onAreaReady(entry.area, entry.job);
      return;
    }
    if (state === "failed") {
      this.errors.set(`job-${entry.job.id}`, `Ingesting “${entry.area.name}” failed: ${entry.job.error ?? "no reason given"}`);
      this.onAreaReady(entry.area, entry.job);
      return;
    }
    entry.timer = setTimeout(() => this.poll(entry), entry.error ? POLL_MS * 3 : POLL_MS);
  }

  renderJob({ area, job, zooms, el, error, failures = [] }) {
    const state = job.state ?? "queued";
    el.dataset.state = state;
    const head = element("div", "job__head");
    const shown = job.outcome === "done_with_failures" ? job.outcome : state;
    head.append(element("strong", null, area.name), element("span", `badge badge--${state}`, STATE_LABELS[shown] ?? state));
    const planned = Number(job.tiles_planned) || 0;
    const failed = Number(job.tiles_failed) || 0;
    const fetched = Number(job.tiles_fetched) || 0;
    const embedded = Number(job.tiles_embedded) || 0;
    const windowsEmbedded = Number(job.windows_embedded) || 0;
    const windowsIndexed = Number(job.windows_indexed) || 0;
    const rows = [
      barRow("Tiles fetched", fetched + failed, planned, `${fetched} / ${planned}${failed ? ` (${failed} failed)` : ""}`),
      barRow("Tiles embedded", embedded, Math.max(1, planned - failed), `${embedded} / ${planned - failed}`),
      barRow(
        "Windows indexed",
        state === "done" ? Math.max(1, windowsIndexed) : windowsIndexed,
        Math.max(1, windowsEmbedded),
        `${windowsIndexed.toLocaleString()} / ${windowsEmbedded.toLocaleString()}`,
      ),
    ];
    const parts = [head, ...rows];
    // Windows mostly outside the imagery are not embedded at all: say how many, so the counts add up.
    const skipped = Number(job.windows_skipped_nodata) || 0;
    if (skipped > 0) parts.push(element("p", "job__note job__skipped", `${skipped.toLocaleString()} windows skipped (no data)`));
    const stages = formatStages(job.stage_seconds);
    if (stages) parts.push(element("p", "job__note job__stages", stages));
    if (zooms.length) {
      const perZoom = element("div", "job__zooms");
      perZoom.append(element("div", "job__zooms-title", "Per zoom: tiles embedded (fetched)"));
      for (const z of zooms) {
        const failedText = z.failed ? `, ${z.failed} failed` : "";
        perZoom.append(barRow(`z${z.z}`, z.embedded, Math.max(1, z.planned - z.failed), `${z.embedded} / ${z.planned} (${z.fetched}${failedText})`));
      }
      parts.push(perZoom);
    }
    if (state === "done") {
      parts.push(element("p", "job__note job__note--ok", `Ready to search: ${windowsIndexed.toLocaleString()} windows indexed.`));
    } else if (state === "failed") {
      parts.push(element("p", "job__note job__note--error", job.error ?? "The job failed without a reason."));
    }
    if (failures.length && state !== "failed") {
      const first = failures[0];
      parts.push(element("p", "job__note", `${failures.length} tile(s) failed, e.g. z${first.z}/${first.x}/${first.y}: ${first.error ?? "unknown reason"}`));
    }
    if (error) parts.push(element("p", "job__note job__note--error", error));
    el.replaceChildren(...parts);
  }
}
