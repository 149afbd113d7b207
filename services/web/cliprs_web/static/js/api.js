/**
 * HTTP access to the web service's own config and to the search-api.
 *
 * Errors from the platform come as `{"error": {"code": "...", "message": "..."}}` with a 4xx/5xx
 * status; they, network failures and malformed answers all surface as `ApiError`.
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

/**
 * GET a URL and parse its JSON body.
 *
 * @param {string} url
 * @param {{signal?: AbortSignal, acceptStatus?: (status: number) => boolean}} [options]
 *   `acceptStatus` lets a caller take a non-2xx answer as data (e.g. a 503 from /readyz).
 * @returns {Promise<{status: number, body: any}>}
 */
export async function getJson(url, { signal, acceptStatus = () => false } = {}) {
  let response;
  try {
    response = await fetch(url, { signal, headers: { Accept: "application/json" } });
  } catch (err) {
    if (err?.name === "AbortError") throw err;
    throw new ApiError(
      `could not reach ${url} (network error: is the service running, and does it allow this page's origin?)`,
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
      throw new ApiError(`${url} answered HTTP ${response.status} without JSON`, {
        status: response.status,
        url,
      });
    }
    return { status: response.status, body };
  }
  throw new ApiError(errorMessage(body, response), {
    status: response.status,
    code: body?.error?.code ?? null,
    url,
  });
}

/** The message of an error answer: the platform's envelope, FastAPI's `detail`, or the status. */
function errorMessage(body, response) {
  const envelope = body?.error;
  if (envelope && typeof envelope.message === "string") return envelope.message;
  if (typeof body?.detail === "string") return body.detail;
  return `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ""}`;
}

/**
 * The page's runtime config, served by the web service next to the page.
 * @returns {Promise<{searchApiUrl: string, tilerUrl: string, mapboxToken: string|null}>}
 */
export async function loadConfig() {
  const { body } = await getJson(new URL("config.json", document.baseURI).toString());
  if (typeof body?.searchApiUrl !== "string" || typeof body?.tilerUrl !== "string") {
    throw new ApiError("config.json lacks searchApiUrl or tilerUrl");
  }
  return {
    searchApiUrl: body.searchApiUrl.replace(/\/+$/, ""),
    tilerUrl: body.tilerUrl.replace(/\/+$/, ""),
    mapboxToken: body.mapboxToken ?? null,
  };
}

/** Client of the search-api gateway. */
export class SearchApi {
  /** @param {string} baseUrl public URL of the search-api, e.g. http://127.0.0.1:8000 */
  constructor(baseUrl) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
  }

  /** Absolute URL of an API path with query parameters. */
  url(path, params = {}) {
    const url = new URL(this.baseUrl + path);
    for (const [key, value] of Object.entries(params)) url.searchParams.set(key, String(value));
    return url.toString();
  }

  /**
   * `GET /readyz`: readiness, including which model is loaded. A 503 is data, not an error.
   * @returns {Promise<{status: number, body: any}>}
   */
  readiness({ signal } = {}) {
    return getJson(this.url("/readyz"), { signal, acceptStatus: (status) => status === 503 });
  }

  /**
   * `GET /v1/areas`: the indexed areas.
   * @returns {Promise<Array<{id: number, name: string, bbox: number[], zooms: number[], source: string, status: string}>>}
   */
  async areas({ signal } = {}) {
    const url = this.url("/v1/areas");
    const { body } = await getJson(url, { signal });
    const areas = Array.isArray(body) ? body : body?.areas;
    if (!Array.isArray(areas)) throw new ApiError(`${url} did not answer a list of areas`, { url });
    return areas.filter((area) => Array.isArray(area?.bbox) && area.bbox.length === 4);
  }

  /**
   * `GET /v1/search?q=...&k=...`: a GeoJSON FeatureCollection of hits, best first.
   * @returns {Promise<{type: string, features: any[], query?: string, took_ms?: number, count?: number}>}
   */
  async search(query, { k = 20, signal } = {}) {
    const url = this.url("/v1/search", { q: query, k });
    const { body } = await getJson(url, { signal });
    if (body?.type !== "FeatureCollection" || !Array.isArray(body.features)) {
      throw new ApiError(`${url} did not answer a GeoJSON FeatureCollection`, { url });
    }
    return body;
  }
}
