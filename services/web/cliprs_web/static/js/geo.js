/** Small geometry and formatting helpers shared by the map, the result list and the forms. */

/** A bbox [w, s, e, n] as a GeoJSON Polygon. */
export function bboxPolygon([w, s, e, n]) {
  return { type: "Polygon", coordinates: [[[w, s], [e, s], [e, n], [w, n], [w, s]]] };
}

/** The [w, s, e, n] around every position of a geometry, or null when it has none. */
export function geometryBbox(geometry) {
  const bounds = [Infinity, Infinity, -Infinity, -Infinity];
  const visit = (coords) => {
    if (typeof coords?.[0] === "number") {
      bounds[0] = Math.min(bounds[0], coords[0]);
      bounds[1] = Math.min(bounds[1], coords[1]);
      bounds[2] = Math.max(bounds[2], coords[0]);
      bounds[3] = Math.max(bounds[3], coords[1]);
    } else if (Array.isArray(coords)) {
      coords.forEach(visit);
    }
  };
  visit(geometry?.coordinates);
  return Number.isFinite(bounds[0]) ? bounds : null;
}

/** The box around several boxes, or null for none. */
export function unionBbox(boxes) {
  if (!boxes.length) return null;
  return boxes.reduce((acc, b) => [
    Math.min(acc[0], b[0]), Math.min(acc[1], b[1]), Math.max(acc[2], b[2]), Math.max(acc[3], b[3]),
  ]);
}

/** Round a coordinate for display and for the API (1e-6° is about 10 cm). */
export function roundCoord(value, digits = 6) {
  return Number(Number(value).toFixed(digits));
}

/** "w,s,e,n" as the API's `bbox` query parameter. */
export function bboxParam(bbox) {
  return bbox.map((v) => roundCoord(v)).join(",");
}

/** Parse "w, s, e, n" typed by a user into four numbers, or null. */
export function parseBbox(text) {
  const parts = String(text).split(/[\s,;]+/).filter(Boolean).map(Number);
  return parts.length === 4 && parts.every(Number.isFinite) ? parts : null;
}

/** "37.67120° N, 75.62000° W" from [lon, lat]. */
export function formatLonLat([lon, lat]) {
  const ns = lat >= 0 ? "N" : "S";
  const ew = lon >= 0 ? "E" : "W";
  return `${Math.abs(lat).toFixed(5)}° ${ns}, ${Math.abs(lon).toFixed(5)}° ${ew}`;
}

/** "37.671200, -75.620000": latitude first, as most map tools take it when pasted. */
export function latLonText([lon, lat]) {
  return `${lat.toFixed(6)}, ${lon.toFixed(6)}`;
}

/** A short label for a box: "−75.66, 37.66 → −75.62, 37.69". */
export function formatBbox(bbox) {
  const [w, s, e, n] = bbox.map((v) => v.toFixed(4));
  return `${w}, ${s} → ${e}, ${n}`;
}

/** Area of a ring's box in km² (rough: for telling a user how big a drawn box is). */
export function bboxAreaKm2([w, s, e, n]) {
  const kmPerDegLat = 111.32;
  const midLat = ((s + n) / 2) * (Math.PI / 180);
  return (e - w) * kmPerDegLat * Math.cos(midLat) * (n - s) * kmPerDegLat;
}
