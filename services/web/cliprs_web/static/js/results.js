/** The result list: one keyboard-focusable button per hit, with thumbnail, score and position. */

import { SCORE_NORM, scoreColor } from "./colors.js";
import { hitId } from "./map-view.js";

/** "37.6712° N, 75.6200° W" from [lon, lat]. */
export function formatLonLat([lon, lat]) {
  const ns = lat >= 0 ? "N" : "S";
  const ew = lon >= 0 ? "E" : "W";
  return `${Math.abs(lat).toFixed(4)}° ${ns}, ${Math.abs(lon).toFixed(4)}° ${ew}`;
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

/** One list item for a hit. Everything from the API goes in as text or attributes, never HTML. */
function resultItem(feature, onSelect) {
  const props = feature.properties ?? {};
  const id = hitId(feature);
  const rank = props.rank ?? "?";
  const score = Number(props.score);
  const scoreText = Number.isFinite(score) ? score.toFixed(3) : "n/a";
  const coords = Array.isArray(props.center) ? formatLonLat(props.center) : "position unknown";

  const item = element("li");
  const button = element("button", "result");
  button.type = "button";
  button.dataset.id = String(id);
  button.setAttribute("aria-label", `Result ${rank}: score ${scoreText}, ${coords}. Show on map.`);
  button.addEventListener("click", () => onSelect(id));

  const thumb = element("img", "result__thumb");
  thumb.alt = "";
  thumb.loading = "lazy";
  thumb.width = 64;
  thumb.height = 64;
  if (typeof props.image_url === "string") thumb.src = props.image_url;
  thumb.addEventListener("error", () => thumb.classList.add("result__thumb--broken"), { once: true });

  const body = element("span", "result__body");
  body.append(element("span", "result__title", `#${rank} · window ${props.window_id ?? id}`));
  const scoreLine = element("span", "result__score");
  const swatch = element("span", "result__swatch");
  swatch.style.background = scoreColor(props[SCORE_NORM]);
  scoreLine.append(swatch, `score ${scoreText}`);
  body.append(scoreLine, element("span", "result__coords", coords));

  button.append(thumb, body);
  item.append(button);
  return item;
}

/** Replace the list with these hits; `onSelect(id)` runs when one is activated. */
export function renderResults(listEl, features, { onSelect }) {
  listEl.replaceChildren(...features.map((feature) => resultItem(feature, onSelect)));
}

/** Mark one result as current (or none) and scroll it into view. */
export function highlightResult(listEl, id) {
  for (const button of listEl.querySelectorAll(".result")) {
    const current = id !== null && button.dataset.id === String(id);
    if (current) {
      button.setAttribute("aria-current", "true");
      button.scrollIntoView({ block: "nearest" });
    } else {
      button.removeAttribute("aria-current");
    }
  }
}
