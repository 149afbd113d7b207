/**
 * A search hit shown to the user: the result list (thumbnail, score, zoom, address, copyable
 * coordinates, "find similar", "locate on map") and the card that opens at its pin.
 * Everything from the API goes in as text or attributes, never as HTML.
 */

import { setImageSource } from "./api.js";
import { SCORE_NORM, scoreColor } from "./colors.js";
import { formatLonLat, latLonText } from "./geo.js";
import { hitId } from "./map-view.js";
import { copyText } from "./ui.js";

/**
 * @typedef {{
 *   onLocate: (id: number|string) => void,
 *   onSimilar: (id: number|string) => void,
 *   onHover: (id: number|string|null) => void,
 *   onLabel?: (windowId: number, positive: boolean) => void,
 *   labelOf?: (windowId: number) => boolean|undefined,
 *   onExplain?: (windowId: number) => Promise<object>,
 *   onHeatmap?: (feature: object) => void,
 * }} ResultHandlers
 */

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined && text !== null) el.textContent = text;
  return el;
}

function button(className, text, onClick, label) {
  const el = element("button", className, text);
  el.type = "button";
  if (label) el.setAttribute("aria-label", label);
  el.addEventListener("click", onClick);
  return el;
}

/** The address of a hit, whatever shape the geocoder gives it (text or an object), or null. */
export function addressText(address) {
  if (typeof address === "string") return address.trim() || null;
  if (!address || typeof address !== "object") return null;
  const name = [address.label, address.display_name, address.name, address.formatted, address.place]
    .find((v) => typeof v === "string" && v.trim());
  if (!name) return null;
  const km = Number.isFinite(address.distance_km) ? address.distance_km : Number(address.distance_m) / 1000;
  return Number.isFinite(km) && km > 0.05 ? `${name} (about ${km < 10 ? km.toFixed(1) : Math.round(km)} km away)` : name;
}

/** How many overlapping windows were merged into this hit, or 0 when the API does not say. */
export function mergedCount(props) {
  const merged = props?.merged ?? props?.merged_ids;
  if (Array.isArray(merged)) return merged.length;
  const n = Number(merged);
  return Number.isInteger(n) && n > 0 ? n : 0;
}

function scoreText(props) {
  const score = Number(props.score);
  return Number.isFinite(score) ? score.toFixed(3) : "n/a";
}

/** How many windows with identical pixels collapsed into this hit, or 0. */
export function identicalCount(props) {
  const n = Number(props?.identical);
  return Number.isInteger(n) && n > 0 ? n : 0;
}

/** "zoom 14 · window 123 · merges 3 overlapping · ×2 identical" */
function metaText(props, id) {
  const parts = [];
  if (props.z !== undefined) parts.push(`zoom ${props.z}`);
  parts.push(`window ${props.window_id ?? id}`);
  const merged = mergedCount(props);
  if (merged) parts.push(`merges ${merged} overlapping`);
  const identical = identicalCount(props);
  if (identical) parts.push(`×${identical} identical`);
  return parts.join(" · ");
}

/** A 0..1 share as a whole percent ("12 %"), or null when unknown. */
function percent(value) {
  if (value === null || value === undefined || value === "") return null;
  const v = Number(value);
  return Number.isFinite(v) ? `${Math.round(v * 100)} %` : null;
}

/** "cloud 12 % · valid 95 %": the window's quality where the API knows it, else null. */
export function qualityText(props) {
  const parts = [];
  const cloud = percent(props?.cloud_score);
  const valid = percent(props?.valid_fraction);
  if (cloud) parts.push(`cloud ${cloud}`);
  if (valid) parts.push(`valid ${valid}`);
  return parts.length ? parts.join(" · ") : null;
}

function thumbnail(props, size) {
  const img = element("img", "thumb");
  img.alt = "";
  img.width = size;
  img.height = size;
  img.decoding = "async";
  img.addEventListener("error", () => img.classList.add("thumb--broken"), { once: true });
  if (typeof props.image_url === "string") setImageSource(img, props.image_url);
  return img;
}

/** The coordinates line with its copy button. */
function coordsLine(props) {
  const line = element("div", "coords");
  if (!Array.isArray(props.center)) {
    line.append(element("span", "coords__text", "position unknown"));
    return line;
  }
  const copyValue = latLonText(props.center);
  line.append(element("span", "coords__text", formatLonLat(props.center)));
  const copy = button("link-button coords__copy", "Copy", async () => {
    const ok = await copyText(copyValue);
    copy.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => { copy.textContent = "Copy"; }, 1500);
  }, `Copy coordinates ${copyValue}`);
  copy.dataset.copy = copyValue;
  line.append(copy);
  return line;
}

function scoreLine(props) {
  const line = element("span", "score");
  const swatch = element("span", "score__swatch");
  swatch.style.background = scoreColor(props[SCORE_NORM]);
  line.append(swatch, `score ${scoreText(props)}`);
  return line;
}

/** One list item for a hit: the thumbnail is its "show on the map" button. */
function resultItem(feature, handlers) {
  const props = feature.properties ?? {};
  const id = hitId(feature);
  const rank = props.rank ?? "?";
  const address = addressText(props.address);

  const item = element("li", "result");
  item.dataset.id = String(id);
  item.addEventListener("mouseenter", () => handlers.onHover(id));
  item.addEventListener("mouseleave", () => handlers.onHover(null));
  item.addEventListener("focusin", () => handlers.onHover(id));
  item.addEventListener("focusout", (event) => {
    if (!item.contains(event.relatedTarget)) handlers.onHover(null);
  });
  // A click anywhere on the item but its buttons (and the selectable coordinates) locates it.
  item.addEventListener("click", (event) => {
    if (!event.target.closest("button, .coords__text")) handlers.onLocate(id);
  });

  const main = button("result__main", null, () => handlers.onLocate(id));
  main.setAttribute(
    "aria-label",
    `Result ${rank}: score ${scoreText(props)}${address ? `, ${address}` : ""}. Show on the map.`,
  );
  main.append(thumbnail(props, 72));

  const body = element("div", "result__body");
  const title = element("div", "result__title");
  title.append(element("span", "result__rank", `#${rank}`), scoreLine(props));
  body.append(title, element("div", "result__meta", metaText(props, id)));
  const quality = qualityText(props);
  if (quality) body.append(element("div", "result__quality", quality));
  if (address) body.append(element("div", "result__address", address));
  body.append(coordsLine(props));
  const actions = element("div", "result__actions");
  actions.append(
    button("small-button", "Find similar", () => handlers.onSimilar(id), `Find windows similar to result ${rank}`),
    button("small-button", "Locate on map", () => handlers.onLocate(id, { card: true }), `Locate result ${rank} on the map`),
  );
  body.append(actions);
  const windowId = Number(props.window_id ?? id);
  const analysis = element("div", "result__actions result__analysis");
  if (handlers.onLabel) analysis.append(thumbs(windowId, handlers, `result ${rank}`));
  const explained = element("div", "explain");
  explained.hidden = true;
  if (handlers.onExplain) analysis.append(explainButton(windowId, handlers, explained, `result ${rank}`));
  if (handlers.onHeatmap && props.tile) {
    analysis.append(button("small-button heat-button", "Where in this tile?", () => handlers.onHeatmap(feature), `Where in the tile of result ${rank} is it? Heat map on the map`));
  }
  if (analysis.childElementCount) body.append(analysis, explained);
  item.append(main, body);
  return item;
}

/**
 * Thumbs up / thumbs down for a window: `aria-pressed` shows its label in the current project;
 * pressing the pressed one again removes the label (the handler decides).
 */
export function thumbs(windowId, handlers, what = `window ${windowId}`) {
  const group = element("div", "thumbs");
  group.setAttribute("role", "group");
  group.setAttribute("aria-label", `Label ${what}`);
  group.dataset.windowId = String(windowId);
  const up = button("thumb-button thumb-button--up", "✓ Yes", () => handlers.onLabel(windowId, true), `Thumbs up: ${what} is what I look for`);
  up.dataset.positive = "true";
  up.title = "Thumbs up: this is what I look for (click again to remove)";
  const down = button("thumb-button thumb-button--down", "✗ No", () => handlers.onLabel(windowId, false), `Thumbs down: ${what} is not what I look for`);
  down.dataset.positive = "false";
  down.title = "Thumbs down: this is not it (click again to remove)";
  group.append(up, down);
  paintThumbs(group, handlers.labelOf?.(windowId));
  return group;
}

/** Show a label state (true: up, false: down, undefined: none) on a thumbs group. */
export function paintThumbs(group, state) {
  group.dataset.label = state === true ? "positive" : state === false ? "negative" : "none";
  for (const b of group.querySelectorAll(".thumb-button")) {
    b.setAttribute("aria-pressed", String(state !== undefined && String(state) === b.dataset.positive));
  }
}

/** Repaint every thumbs group under `root` (list and open card) from `labelOf`. */
export function repaintThumbs(root, labelOf) {
  for (const group of root.querySelectorAll(".thumbs")) paintThumbs(group, labelOf(Number(group.dataset.windowId)));
}

/** "What is this?": ranks labels for the window (image to text) and lists the best five. */
function explainButton(windowId, handlers, target, what) {
  const btn = button("small-button explain-button", "What is this?", async () => {
    if (!target.hidden && target.dataset.state === "done") {
      target.hidden = true;
      btn.setAttribute("aria-expanded", "false");
      return;
    }
    target.hidden = false;
    btn.setAttribute("aria-expanded", "true");
    target.dataset.state = "loading";
    target.replaceChildren(element("p", "hint", "Ranking labels for this window…"));
    try {
      const answer = await handlers.onExplain(windowId);
      target.replaceChildren(explanation(answer));
      target.dataset.state = "done";
    } catch (err) {
      target.replaceChildren(element("p", "note note--warning", `Could not label this window: ${err instanceof Error ? err.message : err}`));
      target.dataset.state = "failed";
    }
  }, `What is ${what}? Rank labels for it`);
  btn.setAttribute("aria-expanded", "false");
  return btn;
}

/** The best labels of a classification as a list: label, probability bar, cosine score. */
export function explanation(answer, top = 5) {
  const list = element("ol", "explain__list");
  list.setAttribute("aria-label", "Best labels for this window: probability (cosine score)");
  for (const row of (answer?.labels ?? []).slice(0, top)) {
    const item = element("li", "explain__item");
    const p = Number(row.probability);
    const meter = element("meter", "explain__meter");
    meter.min = 0;
    meter.max = 1;
    meter.value = Number.isFinite(p) ? p : 0;
    meter.setAttribute("aria-hidden", "true");
    item.append(
      element("span", "explain__label", row.label),
      meter,
      element("span", "explain__score", `${Number.isFinite(p) ? Math.round(p * 100) : "?"} % (${Number(row.score).toFixed(3)})`),
    );
    list.append(item);
  }
  return list;
}

/** Replace the list with these hits. */
export function renderResults(listEl, features, handlers) {
  listEl.replaceChildren(...features.map((feature) => resultItem(feature, handlers)));
}

/** The card that opens at a hit's pin. */
export function hitCard(feature, handlers) {
  const props = feature.properties ?? {};
  const id = hitId(feature);
  const card = element("div", "card");
  card.dataset.id = String(id);
  const head = element("div", "card__head");
  const title = element("div", "card__title");
  title.append(element("strong", null, `#${props.rank ?? "?"}`), " ", scoreLine(props));
  head.append(thumbnail(props, 96), title);
  card.append(head, element("div", "card__meta", metaText(props, id)));
  const quality = qualityText(props);
  if (quality) card.append(element("div", "card__meta card__quality", quality));
  const address = addressText(props.address);
  if (address) card.append(element("div", "card__address", address));
  card.append(coordsLine(props));
  const actions = element("div", "card__actions");
  actions.append(button("small-button", "Find similar", () => handlers.onSimilar(id), `Find windows similar to result ${props.rank ?? ""}`));
  if (handlers.onLabel) actions.append(thumbs(Number(props.window_id ?? id), handlers, `result ${props.rank ?? ""}`));
  card.append(actions);
  return card;
}

/** Mark one result as current (or none) and scroll it into view. */
export function highlightResult(listEl, id, { scroll = true } = {}) {
  for (const item of listEl.querySelectorAll(".result")) {
    const current = id !== null && item.dataset.id === String(id);
    item.classList.toggle("result--current", current);
    const main = item.querySelector(".result__main");
    if (current) {
      main?.setAttribute("aria-current", "true");
      if (scroll) item.scrollIntoView({ block: "nearest" });
    } else {
      main?.removeAttribute("aria-current");
    }
  }
}

/** Mark the result under the pointer on the map (or none). */
export function hoverResult(listEl, id) {
  for (const item of listEl.querySelectorAll(".result")) {
    item.classList.toggle("result--hover", id !== null && item.dataset.id === String(id));
  }
}
