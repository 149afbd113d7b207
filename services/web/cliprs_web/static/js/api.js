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
export async function requestJson(url, { method = "GET", json, form, signal, acceptStatus = () => false } = {}) {
  const init = { method, signal, headers: { Accept: "application/json" } };
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
