/**
 * Web-Mercator XYZ tile math, the same as the platform's (`cliprs.tiles`, which uses
 * `mercantile`), so the page can say how many tiles an area needs before it is started.
 */

/** The latitude where Web-Mercator stops (tiles cover ±85.0511°). */
export const MAX_LATITUDE = 85.0511287798066;

// mercantile nudges coordinates by this much so a point on a tile edge falls in one tile.
const EPSILON = 1e-14;
// cliprs.tiles.count_tiles moves the east and south edges in by this much, so a box that ends
// exactly on a tile border does not count the next row or column.
const EDGE_NUDGE = 1e-9;

/** Fractional Web-Mercator position of a lon/lat in [0, 1] (x east, y south). */
function mercatorFraction(lon, lat) {
  const x = lon / 360 + 0.5;
  const sinLat = Math.sin((lat * Math.PI) / 180);
  const y = 0.5 - (0.25 * Math.log((1 + sinLat) / (1 - sinLat))) / Math.PI;
  return [x, y];
}

/** The tile column or row of a fraction at a zoom, clamped to the grid like mercantile.tile. */
function tileIndex(fraction, zoom) {
  const n = 2 ** zoom;
  if (fraction <= 0) return 0;
  if (fraction >= 1) return n - 1;
  return Math.floor((fraction + EPSILON) * n);
}

/** The tile {x, y, z} that contains a lon/lat. */
export function tileAt(lon, lat, zoom) {
  const [fx, fy] = mercatorFraction(lon, lat);
  return { x: tileIndex(fx, zoom), y: tileIndex(fy, zoom), z: zoom };
}

/** How many tiles of one zoom intersect the box [w, s, e, n]. */
export function countTilesAtZoom([w, s, e, n], zoom) {
  const ul = tileAt(w, n, zoom);
  const lr = tileAt(e - EDGE_NUDGE, s + EDGE_NUDGE, zoom);
  return (lr.x - ul.x + 1) * (lr.y - ul.y + 1);
}

/** The [w, s, e, n] of tile x, y at zoom z (the design brief's inverse formulas). */
export function tileBounds(x, y, z) {
  const n = 2 ** z;
  const lon = (tx) => (tx / n) * 360 - 180;
  const lat = (ty) => (Math.atan(Math.sinh(Math.PI * (1 - (2 * ty) / n))) * 180) / Math.PI;
  return [lon(x), lat(y + 1), lon(x + 1), lat(y)];
}

/** The [w, s, e, n] of the tiles of zoom z that cover a box (tiles overhang the box). */
export function coveringBounds([w, s, e, n], zoom) {
  const ul = tileAt(w, n, zoom);
  const lr = tileAt(e - EDGE_NUDGE, s + EDGE_NUDGE, zoom);
  const [west, , , north] = tileBounds(ul.x, ul.y, zoom);
  const [, south, east] = tileBounds(lr.x, lr.y, zoom);
  return [west, south, east, north];
}

/**
 * Tiles per zoom and in all for a box and zoom levels.
 * @returns {{perZoom: Array<{z: number, tiles: number}>, total: number}}
 */
export function planSize(bbox, zooms) {
  const perZoom = [...new Set(zooms)].sort((a, b) => a - b).map((z) => ({ z, tiles: countTilesAtZoom(bbox, z) }));
  return { perZoom, total: perZoom.reduce((sum, { tiles }) => sum + tiles, 0) };
}

/**
 * Why a box cannot be an area, in words that say how to fix it, or null when it is fine.
 * Mirrors the API's checks so the form can refuse early; the API still has the last word.
 */
export function bboxProblem(bbox) {
  if (!Array.isArray(bbox) || bbox.length !== 4 || !bbox.every(Number.isFinite)) {
    return "Give the box as four numbers: west, south, east, north (degrees).";
  }
  const [w, s, e, n] = bbox;
  if (w < -180 || e > 180) return "Longitudes must be within −180…180.";
  if (Math.abs(s) > MAX_LATITUDE || Math.abs(n) > MAX_LATITUDE) {
    return `Latitudes must be within ±${MAX_LATITUDE.toFixed(2)}° (the Web-Mercator limit).`;
  }
  if (w >= e || s >= n) return "West must be less than east, and south less than north.";
  return null;
}
