/**
 * HTTP access to the web service's own config and to the search-api.
 *
 * Errors from the platform come as `{"error": {"code": "...", "message": "..."}}` with a 4xx/5xx
 * status; they, network failures and malformed answers all surface as `ApiError`, whose message
 * is the platform's own (it says how to fix the request).
 *
 * The search-api grows (polygon filters, pagination, a sources list): what it offers is read
 * from its OpenAPI document once, so the page uses a feature only when it exists.
 */

export class ApiError extends Error {
  /**
   * @param {string} message human-readable, shown to the user
   * @param {{status?: number|null, code?: string|null, url?: string|null}} [details]
   */
  constructor(message, { status = null, code = null, url = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.url = url;
  }
}

// ------------------------------------------------------------------ API keys

/** Where the page keeps the API key: for this browser session only (sessionStorage). */
export const API_KEY_STORAGE = "cliprs.apiKey";
/**
 * Base URLs whose requests carry the key: the search-api and the tiler (which checks it when
 * reads need a key); never the page's own origin or a third party (the Mapbox base map).
 */
const keyedBases = new Set();
/** @type {null | ((info: {status: number, message: string}) => Promise<string|null>)} */
let keyPrompt = null;

/** The stored key, or null. */
export function storedApiKey() {
  try {
    return sessionStorage.getItem(API_KEY_STORAGE);
  } catch {
    return null;
  }
}

/** Keep (or, with null/"", forget) the key for this browser session. */
export function storeApiKey(key) {
  try {
    if (key) sessionStorage.setItem(API_KEY_STORAGE, key);
    else sessionStorage.removeItem(API_KEY_STORAGE);
  } catch {
    /* storage disabled: the key lasts until the page reloads only */
  }
}

/**
 * Ask for a key when the API answers 401 or 403: `prompt` shows the reason and resolves to the
 * key the user typed, or null when they cancel.
 */
export function setKeyPrompt(prompt) {
  keyPrompt = prompt;
}

function keyed(url) {
  for (const base of keyedBases) if (url.startsWith(base)) return true;
  return false;
}

/**
 * The headers that carry the stored key to `url` (empty when it goes elsewhere, or there is no
 * key): for requests the page does not make with `requestJson`, e.g. MapLibre's tiles.
 * @returns {Record<string, string>}
 */
export function keyHeaders(url) {
  const key = keyed(String(url)) ? storedApiKey() : null;
  return key ? { "X-API-Key": key } : {};
}

/**
 * The bytes of `url` as a Blob, sent with the key; `ApiError` with the platform's message on an
 * error answer. For what a plain link or `<img>` cannot fetch when the service wants a key.
 */
export async function fetchBlob(url, { signal } = {}) {
  let response;
  try {
    response = await fetch(url, { signal, headers: keyHeaders(url) });
  } catch (err) {
    if (err?.name === "AbortError") throw err;
    throw new ApiError(`could not reach ${new URL(url).origin} (network error)`, { url });
  }
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw new ApiError(errorMessage(body, response.status, response.statusText), {
      status: response.status,
      code: body?.error?.code ?? null,
      url,
    });
  }
  return response.blob();
}

/**
 * Show `url` in `img`. Without a key to send it is a plain `src`; with one, the image is fetched
 * with the key header and shown from a blob URL (an `<img>` cannot send headers). A failure
 * fires the image's `error` event either way.
 */
export function setImageSource(img, url) {
  if (!Object.keys(keyHeaders(url)).length) {
    img.src = url;
    return;
  }
  fetchBlob(url)
    .then((blob) => {
      const objectUrl = URL.createObjectURL(blob);
      img.addEventListener("load", () => URL.revokeObjectURL(objectUrl), { once: true });
      img.src = objectUrl;
    })
    .catch(() => img.dispatchEvent(new Event("error")));
}

/**
 * Download `url` as a file. Without a key to send, the browser follows the link itself (it
 * streams to disk); with one, the file is fetched with the key header and saved from a blob.
 */
export async function downloadFile(url, filename) {
  const blob = await fetchBlob(url);
  const objectUrl = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = objectUrl;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(objectUrl), 60_000);
}

/** The message of an error answer: the platform's envelope, FastAPI's `detail`, or the status. */
export function errorMessage(body, status, statusText = "") {
  const envelope = body?.error;
  if (envelope && typeof envelope.message === "string") return envelope.message;
  if (typeof envelope === "string") return envelope;
  if (typeof body?.detail === "string") return body.detail;
  if (Array.isArray(body?.detail)) {
    // FastAPI's default validation answer: [{loc: [...], msg: "..."}].
    return body.detail
      .map((d) => {
        const where = (d?.loc ?? []).filter((p) => !["body", "query", "path"].includes(p)).join(".");
        return where ? `${where}: ${d?.msg}` : String(d?.msg);
      })
      .join("; ");
  }
  return `HTTP ${status}${statusText ? ` ${statusText}` : ""}`;
}

/**
 * Send a request and parse its JSON answer.
 *
 * @param {string} url
 * @param {{method?: string, json?: any, form?: FormData, signal?: AbortSignal,
 *          acceptStatus?: (status: number) => boolean}} [options]
 *   `acceptStatus` lets a caller take a non-2xx answer as data (e.g. a 503 from /readyz).
 * @returns {Promise<{status: number, body: any}>}
 */
export async function requestJson(url, options = {}) {
  const { acceptStatus = () => false } = options;
  let response = await send(url, options);
  if ((response.status === 401 || response.status === 403) && keyed(url) && keyPrompt && !acceptStatus(response.status)) {
    // The API wants a (better) key: ask once, keep it for the session, send the request again.
    const body = await response.clone().json().catch(() => null);
    const key = await keyPrompt({ status: response.status, message: errorMessage(body, response.status, response.statusText) });
    if (key) {
      storeApiKey(key.trim());
      response = await send(url, options);
    }
  }
  return readAnswer(url, response, acceptStatus);
}

async function send(url, { method = "GET", json, form, signal } = {}) {
  const init = { method, signal, headers: { Accept: "application/json" } };
  const key = keyed(url) ? storedApiKey() : null;
  if (key) init.headers["X-API-Key"] = key;
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form; // the browser sets the multipart boundary
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    if (err?.name === "AbortError") throw err;
    throw new ApiError(
      `could not reach ${new URL(url).origin} (network error: is the service running, and does it allow this page's origin?)`,
      { url },
    );
  }
  return response;
}

async function readAnswer(url, response, acceptStatus) {
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (response.ok || acceptStatus(response.status)) {
    if (body === null) {
      throw new ApiError(`${url} answered HTTP ${response.status} without JSON`, { status: response.status, url });
    }
    return { status: response.status, body };
  }
  throw new ApiError(errorMessage(body, response.status, response.statusText), {
    status: response.status,
    code: body?.error?.code ?? null,
    url,
  });
}

/**
 * The page's runtime config, served by the web service next to the page.
 * @returns {Promise<{searchApiUrl: string, tilerUrl: string, mapboxToken: string|null}>}
 */
export async function loadConfig() {
  const { body } = await requestJson(new URL("config.json", document.baseURI).toString());
  if (typeof body?.searchApiUrl !== "string" || typeof body?.tilerUrl !== "string") {
    throw new ApiError("config.json lacks searchApiUrl or tilerUrl");
  }
  return {
    searchApiUrl: body.searchApiUrl.replace(/\/+$/, ""),
    tilerUrl: body.tilerUrl.replace(/\/+$/, ""),
    mapboxToken: body.mapboxToken ?? null,
  };
}

/** Follow a local `$ref` ("#/components/schemas/X") in an OpenAPI document. */
function resolveRef(doc, schema) {
  let current = schema;
  for (let i = 0; i < 5 && typeof current?.$ref === "string"; i += 1) {
    current = current.$ref
      .replace(/^#\//, "")
      .split("/")
      .reduce((node, key) => node?.[key], doc);
  }
  return current ?? null;
}

/**
 * What this search-api offers, read from its OpenAPI document.
 * `polygonSearch` is true/false when known, null when the document could not be read.
 */
export function readCapabilities(doc) {
  const paths = doc?.paths ?? {};
  const post = paths["/v1/search"]?.post;
  const bodyFields = Object.keys(resolveRef(doc, post?.requestBody?.content?.["application/json"]?.schema)?.properties ?? {});
  const imageForm = paths["/v1/search/image"]?.post?.requestBody?.content?.["multipart/form-data"]?.schema;
  const imageFields = Object.keys(resolveRef(doc, imageForm)?.properties ?? {});
  const polygonField = bodyFields.find((n) => /polygon|geometry|geojson|within|shape/i.test(n)) ?? "polygon";
  return {
    polygonSearch: Boolean(post),
    polygonField,
    queryField: ["q", "query", "text"].find((n) => bodyFields.includes(n)) ?? "q",
    // Find similar inside a polygon goes through the same body when it takes a window id.
    polygonSimilar: Boolean(post) && bodyFields.includes("window_id"),
    polygonImage: imageFields.includes("polygon"),
    sources: Boolean(paths["/v1/sources"]?.get),
    deleteArea: Boolean(paths["/v1/areas/{area_id}"]?.delete),
  };
}

const UNKNOWN_CAPABILITIES = {
  polygonSearch: null,
  polygonField: "polygon",
  queryField: "q",
  polygonSimilar: false,
  polygonImage: false,
  sources: false,
  deleteArea: false,
};

/** The features of a search answer, checked to be a GeoJSON FeatureCollection. */
function collectionOf(body, url) {
  if (body?.type !== "FeatureCollection" || !Array.isArray(body.features)) {
    throw new ApiError(`${url} did not answer a GeoJSON FeatureCollection`, { url });
  }
  return body;
}

/** Client of the search-api gateway. */
export class SearchApi {
  /** @param {string} baseUrl public URL of the search-api, e.g. http://127.0.0.1:8000 */
  constructor(baseUrl) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.capabilities = UNKNOWN_CAPABILITIES;
    keyedBases.add(this.baseUrl + "/");
  }

  /** Absolute URL of an API path with query parameters (arrays repeat; null/undefined are left out). */
  url(path, params = {}) {
    const url = new URL(this.baseUrl + path);
    for (const [key, value] of Object.entries(params)) {
      if (value === null || value === undefined || value === "") continue;
      for (const v of Array.isArray(value) ? value : [value]) url.searchParams.append(key, String(v));
    }
    return url.toString();
  }

  /** Read the OpenAPI document once; on failure keep assuming only the basic endpoints. */
  async loadCapabilities({ signal } = {}) {
    try {
      const { body } = await requestJson(this.url("/openapi.json"), { signal });
      this.capabilities = readCapabilities(body);
    } catch {
      this.capabilities = UNKNOWN_CAPABILITIES;
    }
    return this.capabilities;
  }

  /** `GET /readyz`: readiness, including which model is loaded. A 503 is data, not an error. */
  readiness({ signal } = {}) {
    return requestJson(this.url("/readyz"), { signal, acceptStatus: (status) => status === 503 });
  }

  /**
   * `GET /v1/areas`: the areas with their latest ingest job.
   * @returns {Promise<Array<{id: number, name: string, bbox: number[], zooms: number[], source: string, status: string, job?: object}>>}
   */
  async areas({ signal } = {}) {
    const url = this.url("/v1/areas");
    const { body } = await requestJson(url, { signal });
    const areas = Array.isArray(body) ? body : body?.areas;
    if (!Array.isArray(areas)) throw new ApiError(`${url} did not answer a list of areas`, { url });
    return areas.filter((area) => Array.isArray(area?.bbox) && area.bbox.length === 4);
  }

  /** `GET /v1/sources` when the API has it: the tile source names; otherwise null. */
  async sources({ signal } = {}) {
    if (!this.capabilities.sources) return null;
    const { body } = await requestJson(this.url("/v1/sources"), { signal });
    const list = Array.isArray(body) ? body : (body?.sources ?? Object.keys(body ?? {}));
    const names = (Array.isArray(list) ? list : Object.keys(list ?? {}))
      .map((s) => (typeof s === "string" ? s : s?.name))
      .filter((s) => typeof s === "string" && s);
    return names;
  }

  /** `GET /v1/search`: text to image, filtered by area, box and window quality. */
  async search({ q, k, areaId, bbox, cursor, maxCloud, minValid, signal }) {
    const url = this.url("/v1/search", { q, k, area_id: areaId, bbox, cursor, max_cloud: maxCloud, min_valid: minValid });
    return collectionOf((await requestJson(url, { signal })).body, url);
  }

  /**
   * `POST /v1/search` with a JSON body: text to image (`q`) or find similar (`windowId`) inside a
   * GeoJSON polygon. Throws `ApiError` with status 404/405 when this API version has no such
   * endpoint.
   */
  async searchPolygon({ q, windowId, k, areaId, polygon, cursor, maxCloud, minValid, signal }) {
    const url = this.url("/v1/search");
    const { queryField, polygonField } = this.capabilities;
    const json = { k, [polygonField]: polygon };
    if (maxCloud !== null && maxCloud !== undefined) json.max_cloud = maxCloud;
    if (minValid !== null && minValid !== undefined) json.min_valid = minValid;
    if (windowId !== undefined && windowId !== null) json.window_id = Number(windowId);
    else json[queryField] = q;
    if (areaId !== null && areaId !== undefined) json.area_id = Number(areaId);
    if (cursor) json.cursor = cursor;
    return collectionOf((await requestJson(url, { method: "POST", json, signal })).body, url);
  }

  /** `POST /v1/search/image`: image to image with an uploaded picture. */
  async searchImage({ file, k, areaId, bbox, polygon, cursor, maxCloud, minValid, signal }) {
    const url = this.url("/v1/search/image", { k, area_id: areaId, bbox, cursor, max_cloud: maxCloud, min_valid: minValid });
    const form = new FormData();
    form.append("file", file, file.name || "image");
    if (polygon) form.append("polygon", JSON.stringify(polygon));
    return collectionOf((await requestJson(url, { method: "POST", form, signal })).body, url);
  }

  /** `GET /v1/windows/{id}/similar`: find similar to an indexed window. */
  async similar({ windowId, k, areaId, bbox, cursor, maxCloud, minValid, signal }) {
    const path = `/v1/windows/${encodeURIComponent(windowId)}/similar`;
    const url = this.url(path, { k, area_id: areaId, bbox, cursor, max_cloud: maxCloud, min_valid: minValid });
    return collectionOf((await requestJson(url, { signal })).body, url);
  }

  /** `POST /v1/areas`: create an area and start ingesting it; answers `{area, job}`. */
  async createArea({ name, bbox, zooms, source, signal }) {
    const url = this.url("/v1/areas");
    const { body } = await requestJson(url, { method: "POST", json: { name, bbox, zooms, source }, signal });
    if (!body?.job?.id) throw new ApiError(`${url} did not answer the new area's job`, { url });
    return body;
  }

  /** `GET /v1/areas/{id}`: one area; `ApiError` with status 404 once it is gone. */
  async area(areaId, { signal } = {}) {
    return (await requestJson(this.url(`/v1/areas/${encodeURIComponent(areaId)}`), { signal })).body;
  }

  /** `DELETE /v1/areas/{id}`: start deleting an area (its vectors leave the index first). */
  async deleteArea(areaId, { signal } = {}) {
    const url = this.url(`/v1/areas/${encodeURIComponent(areaId)}`);
    return (await requestJson(url, { method: "DELETE", signal })).body;
  }

  /** `GET /v1/jobs/{id}`: an ingest job's state and counts. */
  async job(jobId, { signal } = {}) {
    const { body } = await requestJson(this.url(`/v1/jobs/${encodeURIComponent(jobId)}`), { signal });
    return body;
  }

  // ------------------------------------------------------------ projects, labels, refine

  /** `GET /v1/projects`: every project with its area ids and label counts. */
  async projects({ signal } = {}) {
    const url = this.url("/v1/projects");
    const { body } = await requestJson(url, { signal });
    if (!Array.isArray(body)) throw new ApiError(`${url} did not answer a list of projects`, { url });
    return body;
  }

  /** `GET /v1/projects/{id}`: one project with its runs (newest first). */
  async project(projectId, { signal } = {}) {
    return (await requestJson(this.url(`/v1/projects/${encodeURIComponent(projectId)}`), { signal })).body;
  }

  /** `POST /v1/projects`: a new project `{name, query, area_ids}`. */
  async createProject({ name, query, areaIds, signal }) {
    const json = { name, query: query || null, area_ids: areaIds };
    return (await requestJson(this.url("/v1/projects"), { method: "POST", json, signal })).body;
  }

  /** `GET /v1/projects/{id}/labels`: the labels, oldest first, with centres and footprints. */
  async labels(projectId, { signal } = {}) {
    const url = this.url(`/v1/projects/${encodeURIComponent(projectId)}/labels`);
    const { body } = await requestJson(url, { signal });
    if (!Array.isArray(body)) throw new ApiError(`${url} did not answer a list of labels`, { url });
    return body;
  }

  /** `POST /v1/projects/{id}/labels`: mark a window (labelling it again flips the label). */
  async addLabel(projectId, windowId, positive, { signal } = {}) {
    const url = this.url(`/v1/projects/${encodeURIComponent(projectId)}/labels`);
    const json = { window_id: Number(windowId), positive: Boolean(positive), by: "web" };
    return (await requestJson(url, { method: "POST", json, signal })).body;
  }

  /** `DELETE /v1/projects/{id}/labels/{window_id}`: remove a window's label. */
  async removeLabel(projectId, windowId, { signal } = {}) {
    const path = `/v1/projects/${encodeURIComponent(projectId)}/labels/${encodeURIComponent(windowId)}`;
    return (await requestJson(this.url(path), { method: "DELETE", signal })).body;
  }

  /** `POST /v1/projects/{id}/refine`: search the project's areas with its text and labels. */
  async refine({ projectId, k, areaId, bbox, cursor, maxCloud, minValid, signal }) {
    const url = this.url(`/v1/projects/${encodeURIComponent(projectId)}/refine`);
    const json = { k };
    if (areaId !== null && areaId !== undefined) json.area_id = Number(areaId);
    if (bbox) json.bbox = bbox;
    if (cursor) json.cursor = cursor;
    if (maxCloud !== null && maxCloud !== undefined) json.max_cloud = maxCloud;
    if (minValid !== null && minValid !== undefined) json.min_valid = minValid;
    return collectionOf((await requestJson(url, { method: "POST", json, signal })).body, url);
  }

  // ------------------------------------------------------------ detection runs and exports

  /** `POST /v1/projects/{id}/runs`: start a Detect run (answers the queued run). */
  async startRun(projectId, { threshold, signal } = {}) {
    const url = this.url(`/v1/projects/${encodeURIComponent(projectId)}/runs`);
    const json = threshold === undefined ? {} : { threshold };
    return (await requestJson(url, { method: "POST", json, signal })).body;
  }

  /** `GET /v1/runs/{id}`: a run's state, hits and held-out estimate. */
  async run(runId, { signal } = {}) {
    return (await requestJson(this.url(`/v1/runs/${encodeURIComponent(runId)}`), { signal })).body;
  }

  /** `GET /v1/runs/{id}/counts?histogram=true`: the 1,000-bin score histogram (counts at any threshold). */
  async runHistogram(runId, { signal } = {}) {
    const url = this.url(`/v1/runs/${encodeURIComponent(runId)}/counts`, { histogram: "true", threshold: 0.5 });
    const { body } = await requestJson(url, { signal });
    if (!Array.isArray(body?.histogram)) throw new ApiError(`${url} did not answer a histogram`, { url });
    return body;
  }

  /** `PATCH /v1/runs/{id}`: apply a new threshold (hits and polygons re-derived). */
  async setRunThreshold(runId, threshold, { signal } = {}) {
    const url = this.url(`/v1/runs/${encodeURIComponent(runId)}`);
    return (await requestJson(url, { method: "PATCH", json: { threshold }, signal })).body;
  }

  /** URL of a run's export file: `geojson`, `gpkg` or `csv`. */
  exportUrl(runId, format) {
    return this.url(`/v1/runs/${encodeURIComponent(runId)}/export.${format}`);
  }

  /** Vector-tile URL template of a run; `t` (the threshold) makes a new threshold a new URL. */
  runTilesUrl(runId, threshold) {
    return `${this.baseUrl}/v1/runs/${encodeURIComponent(runId)}/tiles/{z}/{x}/{y}.mvt?t=${Number(threshold).toFixed(3)}`;
  }

  // ------------------------------------------------------------ analysis

  /** `POST /v1/classify` with a window id: the default labels ranked for the window (image to text). */
  async classify(windowId, { signal } = {}) {
    const form = new FormData();
    form.append("window_id", String(windowId));
    return (await requestJson(this.url("/v1/classify"), { method: "POST", form, signal })).body;
  }

  /** `GET /v1/tiles/{source}/{z}/{x}/{y}/heatmap?q=`: every window of a tile scored against a text. */
  async heatmap({ source, z, x, y }, q, { grid, signal } = {}) {
    const path = `/v1/tiles/${encodeURIComponent(source)}/${z}/${x}/${y}/heatmap`;
    return (await requestJson(this.url(path, { q, grid }), { signal })).body;
  }
}

/** One zoom's progress, whatever the service calls the fields. */
function zoomProgress(z, row) {
  const n = (key) => (Number.isFinite(Number(row?.[key])) ? Number(row[key]) : 0);
  return {
    z: Number(z),
    planned: n("planned"),
    fetched: n("fetched") + n("cached"),
    failed: n("failed"),
    embedded: n("embedded"),
  };
}

/**
 * Per-zoom progress rows from a `per_zoom`/`zooms` field: a list of `{z, planned, ...}` or an
 * object keyed by zoom. Empty when there is none.
 * @returns {Array<{z: number, planned: number, fetched: number, failed: number, embedded: number}>}
 */
export function perZoomProgress(body) {
  const raw = body?.per_zoom ?? body?.zooms;
  if (Array.isArray(raw)) {
    return raw.filter((r) => r && typeof r === "object" && Number.isFinite(Number(r.z))).map((r) => zoomProgress(r.z, r));
  }
  if (raw && typeof raw === "object") {
    return Object.entries(raw)
      .filter(([z, r]) => Number.isFinite(Number(z)) && r && typeof r === "object")
      .map(([z, r]) => zoomProgress(z, r))
      .sort((a, b) => a.z - b.z);
  }
  return [];
}

/** Client of the tiler's public planning and progress endpoints (used when it has them). */
export class TilerApi {
  /** @param {string} baseUrl public URL of the tiler, e.g. http://127.0.0.1:8001 */
  constructor(baseUrl) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.capabilities = { plan: false, progress: false };
    // When reads need a key, the tiler wants it too (tiles, window pixels, job progress).
    keyedBases.add(this.baseUrl + "/");
  }

  async loadCapabilities({ signal } = {}) {
    try {
      const { body } = await requestJson(`${this.baseUrl}/openapi.json`, { signal });
      const paths = body?.paths ?? {};
      this.capabilities = {
        plan: Boolean(paths["/v1/plan"]?.post),
        progress: Boolean(paths["/v1/jobs/{job_id}/progress"]?.get),
      };
    } catch {
      this.capabilities = { plan: false, progress: false };
    }
    return this.capabilities;
  }

  /**
   * `POST /v1/plan`: tiles per zoom for a box, and the tile budget; null when the tiler has no
   * planning endpoint.
   * @returns {Promise<null|{total: number, perZoom: Array<{z: number, tiles: number}>, limit: number|null, withinLimit: boolean|null, message: string|null}>}
   */
  async plan({ bbox, zooms, signal }) {
    if (!this.capabilities.plan) return null;
    const { body } = await requestJson(`${this.baseUrl}/v1/plan`, { method: "POST", json: { bbox, zooms }, signal });
    const perZoom = Object.entries(body?.per_zoom ?? {}).map(([z, tiles]) => ({ z: Number(z), tiles: Number(tiles) }));
    return {
      total: Number(body?.tiles),
      perZoom: perZoom.sort((a, b) => a.z - b.z),
      limit: Number.isFinite(body?.limit) ? body.limit : null,
      withinLimit: typeof body?.within_limit === "boolean" ? body.within_limit : null,
      message: typeof body?.message === "string" ? body.message : null,
    };
  }

  /** `GET /v1/jobs/{id}/progress`: per-zoom progress rows; null when the tiler has no such endpoint. */
  async progress(jobId, { signal } = {}) {
    if (!this.capabilities.progress) return null;
    const { body } = await requestJson(`${this.baseUrl}/v1/jobs/${encodeURIComponent(jobId)}/progress`, { signal });
    return { zooms: perZoomProgress(body), failures: Array.isArray(body?.failures) ? body.failures : [] };
  }
}
