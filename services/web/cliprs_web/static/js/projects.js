/**
 * The analyst workflow ("Find all"): a project (a query over some areas), its labels (thumbs up
 * and down on results and pins), "Refine", and Detect runs: train on the labels, score every
 * window of the project's areas, a threshold slider with the live count of hits (from the run's
 * histogram, no re-run), "Apply", the detections drawn from vector tiles, and the exports.
 */

import { ApiError, downloadFile, keyHeaders, setImageSource } from "./api.js";
import { formatLonLat } from "./geo.js";
import { repaintThumbs } from "./results.js";
import { setStatus } from "./ui.js";

const POLL_MS = 1000;
// States of a run that is still being worked on (rethresholding: a new threshold applied in the background).
const LIVE = new Set(["queued", "running", "rethresholding"]);
const HIST_BINS = 1000;
const DEFAULT_THRESHOLD = 0.5;

function describe(err) {
  const text = err instanceof Error ? err.message : String(err);
  return err instanceof ApiError && err.status ? `(HTTP ${err.status}) ${text}` : text;
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined && text !== null) el.textContent = text;
  return el;
}

const plural = (n, word) => `${Number(n).toLocaleString("en-US")} ${word}${n === 1 ? "" : "s"}`;

/**
 * Windows scoring at or above `threshold`, from a run's histogram: the API's own rule (bins of
 * 0.001; a threshold's bin is round(t * 1000), at most the last), so the count is what "Apply"
 * will give.
 */
export function countAt(histogram, threshold) {
  const bin = Math.min(Math.max(Math.round(Number(threshold) * HIST_BINS), 0), HIST_BINS - 1);
  let total = 0;
  for (let i = bin; i < histogram.length; i += 1) total += Number(histogram[i]) || 0;
  return total;
}

export class ProjectController {
  /**
   * @param {{
   *   api: import("./api.js").SearchApi,
   *   errors: import("./ui.js").ErrorArea,
   *   search: import("./search.js").SearchController,
   *   getMap: () => import("./map-view.js").MapView|null,
   *   getAreas: () => Array<{id: number, status: string}>,
   *   tilerUrl: string,
   *   selectTab: (id: string) => void,
   * }} deps
   */
  constructor({ api, errors, search, getMap, getAreas, tilerUrl, selectTab }) {
    Object.assign(this, { api, errors, search, getMap, getAreas, tilerUrl, selectTab });
    const $ = (id) => document.getElementById(id);
    this.els = {
      select: $("project-select"),
      form: $("project-form"),
      name: $("project-name"),
      summary: $("project-summary"),
      line: $("project-line"),
      refine: $("refine-button"),
      projectRefine: $("project-refine"),
      counts: $("label-counts"),
      labels: $("label-list"),
      detect: $("detect-start"),
      progress: $("run-progress"),
      runStatus: $("run-status"),
      runResult: $("run-result"),
      slider: $("run-threshold"),
      sliderValue: $("run-threshold-value"),
      count: $("run-count"),
      apply: $("run-apply"),
      estimate: $("run-estimate"),
      layer: $("run-layer"),
      exports: { geojson: $("export-geojson"), gpkg: $("export-gpkg"), csv: $("export-csv") },
    };
    this.projects = [];
    /** @type {object|null} */
    this.project = null;
    /** window id -> label */
    this.labels = new Map();
    /** @type {object|null} the run shown (or being followed) */
    this.run = null;
    this.histogram = null;
    this.polling = null;
    this.creating = null;
    this.wire();
  }

  wire() {
    const els = this.els;
    els.select.addEventListener("change", () => this.open(els.select.value ? Number(els.select.value) : null));
    els.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.createFromSearch({ name: els.name.value.trim() });
    });
    els.refine.addEventListener("click", () => this.refine());
    els.projectRefine.addEventListener("click", () => this.refine());
    els.detect.addEventListener("click", () => this.detect());
    els.slider.addEventListener("input", () => this.renderCount());
    els.apply.addEventListener("click", () => this.applyThreshold());
    els.layer.addEventListener("change", () => this.drawRun());
    for (const [format, link] of Object.entries(els.exports)) {
      link.addEventListener("click", (event) => {
        // A plain link cannot send the key: when there is one, fetch the file with it instead.
        if (!link.href || !Object.keys(keyHeaders(link.href)).length) return;
        event.preventDefault();
        downloadFile(link.href, `run-${this.run?.id ?? "export"}.${format}`).catch((err) =>
          this.errors.set("detect", `Could not download the ${link.textContent} export: ${describe(err)}`),
        );
      });
    }
    this.search.setResultHandlers({
      onLabel: (windowId, positive) => this.label(windowId, positive),
      labelOf: (windowId) => this.labels.get(Number(windowId))?.positive,
    });
    this.render();
  }

  /** Load the list of projects into the picker (keeping the open one). */
  async loadProjects() {
    try {
      this.projects = await this.api.projects();
      this.errors.clear("projects");
    } catch (err) {
      this.errors.set("projects", `Could not load the projects: ${describe(err)}`);
      return;
    }
    const options = [new Option("No project", "")];
    for (const p of this.projects) options.push(new Option(`${p.name} (${p.labels.positive} ✓ · ${p.labels.negative} ✗)`, String(p.id)));
    this.els.select.replaceChildren(...options);
    this.els.select.value = this.project ? String(this.project.id) : "";
  }

  /** Areas a new project covers: the "search in" area, or every area that is ready. */
  newProjectAreas() {
    const chosen = this.search.areaFilter();
    if (chosen !== null) return [chosen];
    const areas = this.getAreas();
    const ready = areas.filter((a) => a.status === "ready");
    return (ready.length ? ready : areas).map((a) => a.id);
  }

  /** Create a project from the current search (name: given, or the search text) and open it. */
  async createFromSearch({ name = "" } = {}) {
    if (this.creating) return this.creating;
    const query = this.search.currentText();
    const projectName = name || query || `Project ${new Date().toISOString().slice(0, 16).replace("T", " ")}`;
    const areaIds = this.newProjectAreas();
    if (!areaIds.length) {
      this.errors.set("project", "There is no area to make a project of: ingest an area first (Areas tab).");
      return null;
    }
    this.creating = (async () => {
      try {
        const project = await this.api.createProject({ name: projectName, query, areaIds });
        this.errors.clear("project");
        this.els.name.value = "";
        this.project = project;
        await this.loadProjects();
        await this.open(project.id);
        return project;
      } catch (err) {
        this.errors.set("project", `Could not create the project: ${describe(err)}`);
        return null;
      } finally {
        this.creating = null;
      }
    })();
    return this.creating;
  }

  /** Open a project (or none): its labels, and its newest run. */
  async open(projectId) {
    this.stopPolling();
    this.run = null;
    this.histogram = null;
    this.getMap()?.clearRun();
    if (projectId === null) {
      this.project = null;
      this.labels = new Map();
      this.render();
      return;
    }
    try {
      const [project, labels] = await Promise.all([this.api.project(projectId), this.api.labels(projectId)]);
      this.project = project;
      this.labels = new Map(labels.map((l) => [Number(l.window_id), l]));
      this.errors.clear("project");
    } catch (err) {
      this.errors.set("project", `Could not open project ${projectId}: ${describe(err)}`);
      return;
    }
    this.els.select.value = String(projectId);
    this.render();
    const runs = this.project.runs ?? [];
    const live = runs.find((r) => LIVE.has(r.state));
    const done = runs.find((r) => r.state === "done");
    const pick = live ?? done;
    if (pick) this.follow(pick.id);
  }

  /** Thumbs up (true) or down (false) on a window; the same thumb again removes the label. */
  async label(windowId, positive) {
    const id = Number(windowId);
    if (!this.project) {
      const created = await this.createFromSearch({});
      if (!created) return;
    }
    const projectId = this.project.id;
    const current = this.labels.get(id);
    try {
      if (current && current.positive === positive) {
        await this.api.removeLabel(projectId, id);
        this.labels.delete(id);
      } else {
        const label = await this.api.addLabel(projectId, id, positive);
        this.labels.set(id, label);
      }
      this.errors.clear("label");
    } catch (err) {
      this.errors.set("label", `Could not label window ${id}: ${describe(err)}`);
    }
    this.render();
  }

  /** Search again with the project's text and labels; the results replace the list. */
  refine() {
    if (!this.project) return;
    this.selectTab("tab-search");
    this.search.run({
      kind: "refine",
      projectId: this.project.id,
      name: this.project.name,
      q: this.project.query,
      areaIds: this.project.area_ids ?? [],
    });
  }

  /** Start a Detect run over the project's areas and follow it. */
  async detect() {
    if (!this.project) return;
    this.els.detect.disabled = true;
    try {
      const threshold = this.run?.state === "done" ? Number(this.els.slider.value) : DEFAULT_THRESHOLD;
      const run = await this.api.startRun(this.project.id, { threshold });
      this.errors.clear("detect");
      this.follow(run.id, run);
    } catch (err) {
      this.errors.set("detect", `Could not start detection: ${describe(err)}`);
      this.renderButtons();
    }
  }

  stopPolling() {
    clearTimeout(this.polling);
    this.polling = null;
  }

  /** Poll a run until it is done or failed; then show it. */
  async follow(runId, first = null) {
    this.stopPolling();
    this.followed = runId;
    let run = first;
    try {
      run = run ?? (await this.api.run(runId));
    } catch (err) {
      this.errors.set("detect", `Could not read run ${runId}: ${describe(err)}`);
      return;
    }
    if (this.followed !== runId) return;
    this.run = run;
    this.errors.clear("detect");
    if (LIVE.has(run.state)) {
      this.renderRun();
      this.polling = setTimeout(() => {
        this.api
          .run(runId)
          .then((next) => this.followed === runId && this.follow(runId, next))
          .catch((err) => {
            this.errors.set("detect", `Lost track of run ${runId}: ${describe(err)}`);
            this.polling = setTimeout(() => this.follow(runId), POLL_MS * 3);
          });
      }, POLL_MS);
      return;
    }
    if (run.state === "done") {
      try {
        this.histogram = (await this.api.runHistogram(runId)).histogram;
      } catch (err) {
        this.histogram = null;
        this.errors.set("detect", `Could not read the scores of run ${runId}: ${describe(err)}`);
      }
      this.els.slider.value = String(run.threshold);
      this.refreshProjectSummary();
    }
    this.renderRun();
    this.drawRun();
  }

  /** Re-read the project (its runs and counts) after a run finished; quietly. */
  async refreshProjectSummary() {
    if (!this.project) return;
    try {
      this.project = await this.api.project(this.project.id);
      this.renderProject();
      this.loadProjects();
    } catch {
      // The run's own answer is shown anyway; the summary catches up on the next open.
    }
  }

  /** PATCH the run with the slider's threshold; redraw its tiles (the URL carries the threshold). */
  async applyThreshold() {
    if (this.run?.state !== "done") return;
    const threshold = Number(this.els.slider.value);
    this.els.apply.disabled = true;
    setStatus(this.els.runStatus, `Applying threshold ${threshold.toFixed(3)}…`);
    try {
      this.run = await this.api.setRunThreshold(this.run.id, threshold);
      this.errors.clear("detect");
      // 202: too many hits for a request; the indexer applies it: follow the run until done.
      if (this.run.state === "rethresholding") return this.follow(this.run.id, this.run);
    } catch (err) {
      this.errors.set("detect", `Could not apply the threshold: ${describe(err)}`);
    }
    this.renderRun();
    this.drawRun();
  }

  /** The run's vector tiles on the map (when done and the box is ticked), else none. */
  drawRun() {
    const map = this.getMap();
    if (!map) return;
    if (this.run?.state === "done" && this.els.layer.checked) {
      map.showRun(this.api.runTilesUrl(this.run.id, this.run.threshold), this.run.threshold);
    } else {
      map.clearRun();
    }
  }

  // ---------------------------------------------------------------- rendering

  render() {
    this.renderProject();
    this.renderLabels();
    this.renderButtons();
    this.renderRun();
    repaintThumbs(document, (id) => this.labels.get(Number(id))?.positive);
  }

  counts() {
    let positive = 0;
    for (const l of this.labels.values()) if (l.positive) positive += 1;
    return { positive, negative: this.labels.size - positive };
  }

  renderProject() {
    const { summary, line } = this.els;
    const p = this.project;
    document.body.dataset.project = p ? String(p.id) : "";
    if (!p) {
      summary.textContent = "No project open. Create one from a search, or give a result a thumbs up.";
      line.textContent = "No project: a thumbs up or down on a result starts one from this search.";
      return;
    }
    const { positive, negative } = this.counts();
    const areas = p.area_ids?.length ? `area${p.area_ids.length === 1 ? "" : "s"} ${p.area_ids.join(", ")}` : "no areas";
    const query = p.query ? `“${p.query}”` : "no text";
    const runs = p.runs?.length ? `, ${plural(p.runs.length, "run")}` : "";
    summary.textContent = `Project “${p.name}”: ${query} over ${areas}; ${positive} ✓, ${negative} ✗${runs}.`;
    line.textContent = `Labelling for project “${p.name}” (${positive} ✓ · ${negative} ✗).`;
  }

  renderButtons() {
    const { positive, negative } = this.counts();
    const busy = this.run && (this.run.state === "queued" || this.run.state === "running");
    const canRefine = Boolean(this.project) && (Boolean(this.project.query) || positive > 0);
    this.els.refine.disabled = !canRefine;
    this.els.projectRefine.disabled = !canRefine;
    this.els.detect.disabled = !this.project || !positive || !negative || Boolean(busy);
    this.els.detect.title = this.project && (!positive || !negative) ? "Needs at least one ✓ and one ✗ label" : "";
  }

  renderLabels() {
    const { counts, labels } = this.els;
    const { positive, negative } = this.counts();
    counts.textContent = `${positive} ✓ · ${negative} ✗`;
    const items = [...this.labels.values()].map((label) => this.labelItem(label));
    if (!items.length) {
      const empty = element("li", "label-item label-item--empty hint", this.project ? "No labels yet." : "Open or create a project to label.");
      labels.replaceChildren(empty);
      return;
    }
    labels.replaceChildren(...items);
  }

  labelItem(label) {
    const id = Number(label.window_id);
    const item = element("li", `label-item label-item--${label.positive ? "positive" : "negative"}`);
    item.dataset.windowId = String(id);
    const img = element("img", "thumb label-item__thumb");
    img.alt = "";
    img.width = 48;
    img.height = 48;
    img.addEventListener("error", () => img.classList.add("thumb--broken"), { once: true });
    setImageSource(img, `${this.tilerUrl}/windows/${id}.png`);
    const body = element("div", "label-item__body");
    body.append(
      element("div", "label-item__kind", label.positive ? "✓ match" : "✗ not a match"),
      element("div", "label-item__meta", `zoom ${label.z} · window ${id}`),
    );
    if (Array.isArray(label.center)) body.append(element("div", "label-item__meta", formatLonLat(label.center)));
    const actions = element("div", "label-item__actions");
    const show = element("button", "small-button", "Show");
    show.type = "button";
    show.setAttribute("aria-label", `Show labelled window ${id} on the map`);
    show.addEventListener("click", () => {
      if (Array.isArray(label.center)) this.getMap()?.map.flyTo({ center: label.center, zoom: Math.max(Number(label.z) + 1, 12), duration: 800 });
    });
    const remove = element("button", "small-button label-item__remove", "Remove");
    remove.type = "button";
    remove.setAttribute("aria-label", `Remove the label of window ${id}`);
    remove.addEventListener("click", () => this.label(id, label.positive));
    actions.append(show, remove);
    item.append(img, body, actions);
    return item;
  }

  renderRun() {
    const els = this.els;
    const run = this.run;
    this.renderButtons();
    els.runStatus.dataset.state = run?.state ?? "";
    els.runResult.dataset.runId = run ? String(run.id) : "";
    const busy = run && LIVE.has(run.state);
    els.progress.hidden = !busy;
    if (!run) {
      setStatus(els.runStatus, this.project ? "No detection run yet: label at least one ✓ and one ✗, then train." : "");
      els.runResult.hidden = true;
      return;
    }
    if (busy) {
      const since = (Date.now() - Date.parse(run.created_at)) / 1000;
      const time = Number.isFinite(since) && since >= 0 && run.state !== "rethresholding" ? ` (${Math.round(since)} s)` : "";
      const doing = {
        queued: "queued: waiting for a worker",
        running: "running: training and scoring every window",
        rethresholding: "applying the new threshold in the background",
      }[run.state];
      setStatus(els.runStatus, `Run ${run.id} ${doing}${time}…`);
      els.runResult.hidden = true;
      return;
    }
    if (run.state === "failed") {
      setStatus(els.runStatus, `Run ${run.id} failed: ${run.error ?? "no reason given"}.`);
      els.runResult.hidden = true;
      return;
    }
    const seconds = Object.values(run.stage_seconds ?? {}).reduce((a, b) => a + (Number(b) || 0), 0);
    setStatus(
      els.runStatus,
      `Run ${run.id} done: ${plural(run.windows_scored, "window")} scored, ${plural(run.hits, "hit")} at ${Number(run.threshold).toFixed(3)}` +
        `${seconds ? ` (${seconds.toFixed(1)} s)` : ""}.`,
    );
    els.runResult.hidden = false;
    const est = run.estimate;
    const fmt = (v) => (v === null || v === undefined ? "n/a" : Number(v).toFixed(2));
    els.estimate.textContent = est
      ? `Estimate on held-out labels (${est.held_out_positive} ✓, ${est.held_out_negative} ✗) at ${Number(est.threshold ?? run.threshold).toFixed(3)}: ` +
        `precision ${fmt(est.precision)}, recall ${fmt(est.recall)}.`
      : "No estimate (too few labels to hold some out).";
    for (const [format, link] of Object.entries(els.exports)) {
      link.href = this.api.exportUrl(run.id, format);
      link.setAttribute("aria-label", `Download run ${run.id}'s detections as ${link.textContent}`);
    }
    this.renderCount();
  }

  /** The slider's value and the hits at it, counted from the histogram (instant, no request). */
  renderCount() {
    const els = this.els;
    const t = Number(els.slider.value);
    els.sliderValue.textContent = t.toFixed(3);
    if (!this.run || this.run.state !== "done") return;
    const applied = Math.abs(t - Number(this.run.threshold)) < 5e-4;
    els.apply.disabled = applied;
    if (!this.histogram) {
      els.count.textContent = applied ? `${plural(this.run.hits, "hit")}` : "count unknown";
      return;
    }
    const n = countAt(this.histogram, t);
    els.count.dataset.count = String(n);
    els.count.textContent = `${plural(n, "hit")} of ${Number(this.run.windows_scored).toLocaleString("en-US")} windows${applied ? " (applied)" : ""}`;
    els.slider.setAttribute("aria-valuetext", `threshold ${t.toFixed(3)}: ${plural(n, "hit")}`);
  }
}
