/**
 * The two analysis views of a hit: "What is this?" (the platform's zero-shot labels for the
 * window: image to text) and "Where in this tile is it?" (every window of the hit's tile scored
 * against the current text, drawn over the tile as a heat map).
 */

import { ApiError } from "./api.js";

const HEAT_GRID = 16;
/** Cold to hot (blue, pale yellow, red): readable over imagery; low cells are also more transparent. */
export const HEAT_RAMP = ["#2c7bb6", "#abd9e9", "#ffffbf", "#fdae61", "#d7191c"];
const ALPHA_LOW = 70;
const ALPHA_HIGH = 235;

function describe(err) {
  const text = err instanceof Error ? err.message : String(err);
  return err instanceof ApiError && err.status ? `(HTTP ${err.status}) ${text}` : text;
}

function rgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

/** RGB of a 0..1 value on the heat ramp. */
function rampColor(t) {
  const x = Math.min(1, Math.max(0, t)) * (HEAT_RAMP.length - 1);
  const i = Math.min(Math.floor(x), HEAT_RAMP.length - 2);
  const a = rgb(HEAT_RAMP[i]);
  const b = rgb(HEAT_RAMP[i + 1]);
  return a.map((c, k) => Math.round(c + (b[k] - c) * (x - i)));
}

/**
 * A heat-map grid (rows top to bottom, null where no window covers) as a PNG data URL of
 * `px` pixels a side, each cell a solid block (drawn large because the map's smooth scaling
 * would blur one-pixel cells, and its "nearest" resampling of image sources draws black in
 * software WebGL). Values are stretched between the grid's lowest and highest score: raw
 * cosines sit in a narrow band.
 */
export function gridImage(values, px = 256) {
  const rows = values.length;
  const cols = rows ? values[0].length : 0;
  const flat = values.flat().filter((v) => Number.isFinite(v));
  const lo = Math.min(...flat);
  const hi = Math.max(...flat);
  const canvas = document.createElement("canvas");
  canvas.width = px;
  canvas.height = px;
  const ctx = canvas.getContext("2d");
  for (let r = 0; r < rows; r += 1) {
    for (let c = 0; c < cols; c += 1) {
      const v = values[r][c];
      if (!Number.isFinite(v)) continue; // transparent
      const t = hi > lo ? (v - lo) / (hi - lo) : 1;
      const [red, green, blue] = rampColor(t);
      const alpha = (ALPHA_LOW + (ALPHA_HIGH - ALPHA_LOW) * t) / 255;
      ctx.fillStyle = `rgba(${red}, ${green}, ${blue}, ${alpha.toFixed(3)})`;
      // Whole-pixel edges, so neighbouring cells meet without seams.
      const x0 = Math.round((c * px) / cols);
      const y0 = Math.round((r * px) / rows);
      ctx.fillRect(x0, y0, Math.round(((c + 1) * px) / cols) - x0, Math.round(((r + 1) * px) / rows) - y0);
    }
  }
  return { url: canvas.toDataURL("image/png"), lo, hi };
}

export class AnalysisController {
  /**
   * @param {{
   *   api: import("./api.js").SearchApi,
   *   errors: import("./ui.js").ErrorArea,
   *   search: import("./search.js").SearchController,
   *   getMap: () => import("./map-view.js").MapView|null,
   * }} deps
   */
  constructor({ api, errors, search, getMap }) {
    Object.assign(this, { api, errors, search, getMap });
    this.els = {
      info: document.getElementById("heatmap-info"),
      text: document.getElementById("heatmap-text"),
      clear: document.getElementById("heatmap-clear"),
    };
    this.heat = null;
    this.els.clear.addEventListener("click", () => this.clearHeatmap());
    search.setResultHandlers({
      onExplain: (windowId) => this.explain(windowId),
      onHeatmap: (feature) => this.heatmap(feature),
    });
  }

  /** "What is this?": the labels ranked for a window (errors go to the caller, shown in place). */
  async explain(windowId) {
    return this.api.classify(windowId);
  }

  /** "Where in this tile is it?": the current text scored over the hit's tile, drawn on the map. */
  async heatmap(feature) {
    const tile = feature.properties?.tile;
    const q = this.search.currentText();
    if (!q) {
      this.errors.set("heatmap", "Type what to look for in the search box first: the heat map scores the tile against that text.");
      return;
    }
    if (!tile) return;
    const map = this.getMap();
    this.els.info.hidden = false;
    this.els.info.dataset.state = "loading";
    this.els.text.textContent = `Scoring every window of tile ${tile.z}/${tile.x}/${tile.y} against “${q}”…`;
    try {
      const body = await this.api.heatmap(tile, q, { grid: HEAT_GRID });
      this.errors.clear("heatmap");
      const { url, lo, hi } = gridImage(body.grid?.values ?? []);
      this.heat = { tile: body.tile, query: q, best: body.best, count: body.count };
      if (map) {
        map.showHeatmap(url, body.tile.bounds);
        map.fitBbox(body.tile.bounds, { maxZoom: 18, duration: 600 });
      }
      this.els.info.dataset.state = "shown";
      this.els.info.dataset.tile = `${tile.z}/${tile.x}/${tile.y}`;
      this.els.text.textContent =
        `Where “${q}” is in tile ${tile.z}/${tile.x}/${tile.y}: ${body.count} windows scored, ` +
        `cells from ${lo.toFixed(3)} to ${hi.toFixed(3)}; best window ${body.best}.`;
      this.els.clear.focus();
    } catch (err) {
      this.els.info.dataset.state = "failed";
      this.els.text.textContent = "";
      this.els.info.hidden = true;
      this.errors.set("heatmap", `Could not make the heat map: ${describe(err)}`);
    }
  }

  clearHeatmap() {
    this.getMap()?.clearHeatmap();
    this.heat = null;
    this.els.info.hidden = true;
    this.els.info.dataset.state = "";
  }
}
