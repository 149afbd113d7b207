/**
 * Score colours, shared by the map pins and the result list so they always agree.
 * Scores are normalised within one result set (best = 1, worst = 0): raw CLIP similarities sit
 * in a narrow band, so an absolute scale would paint every pin the same.
 */

/** Low → high (plasma-like), readable on dark imagery with a white outline. */
export const SCORE_RAMP = ["#3b0f9e", "#8a0da3", "#cc4778", "#f48849", "#fce825"];

/** Property the map styles read; set by `normaliseScores`. */
export const SCORE_NORM = "score_norm";

/** Add `properties.score_norm` in [0, 1] to each feature (in place) and return the features. */
export function normaliseScores(features) {
  const scores = features.map((f) => Number(f.properties?.score)).filter(Number.isFinite);
  const lo = Math.min(...scores);
  const hi = Math.max(...scores);
  for (const feature of features) {
    const score = Number(feature.properties?.score);
    const norm = !Number.isFinite(score) ? 0 : hi > lo ? (score - lo) / (hi - lo) : 1;
    feature.properties = { ...feature.properties, [SCORE_NORM]: norm };
  }
  return features;
}

/** MapLibre expression colouring by `score_norm`. */
export function scoreColorExpression() {
  const stops = SCORE_RAMP.flatMap((color, i) => [i / (SCORE_RAMP.length - 1), color]);
  return ["interpolate", ["linear"], ["coalesce", ["get", SCORE_NORM], 0], ...stops];
}

/** CSS colour for a normalised score, interpolated like `scoreColorExpression`. */
export function scoreColor(norm) {
  const t = Math.min(1, Math.max(0, Number(norm) || 0)) * (SCORE_RAMP.length - 1);
  const i = Math.min(Math.floor(t), SCORE_RAMP.length - 2);
  const a = hexToRgb(SCORE_RAMP[i]);
  const b = hexToRgb(SCORE_RAMP[i + 1]);
  const f = t - i;
  const mix = a.map((channel, k) => Math.round(channel + (b[k] - channel) * f));
  return `rgb(${mix.join(", ")})`;
}

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}
