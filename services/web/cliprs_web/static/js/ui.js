/** Small page widgets: the error area, the status line and the fallback-model banner. */

/**
 * A visible list of current problems, one per key ("areas", "search"...), so a later success
 * clears only its own message.
 */
export class ErrorArea {
  /** @param {HTMLElement} el */
  constructor(el) {
    this.el = el;
    this.messages = new Map();
  }

  set(key, message) {
    this.messages.set(key, message);
    this.render();
  }

  clear(key) {
    if (this.messages.delete(key)) this.render();
  }

  render() {
    if (!this.messages.size) {
      this.el.hidden = true;
      this.el.replaceChildren();
      return;
    }
    const title = document.createElement("p");
    title.className = "errors__title";
    title.textContent = this.messages.size === 1 ? "Something went wrong" : "Some things went wrong";
    const list = document.createElement("ul");
    for (const message of this.messages.values()) {
      const item = document.createElement("li");
      item.textContent = message;
      list.append(item);
    }
    this.el.replaceChildren(title, list);
    this.el.hidden = false;
  }
}

/** Set the polite status line (screen readers announce it). */
export function setStatus(el, text) {
  el.textContent = text;
}

/**
 * Show the banner when the search-api's /readyz says it runs on the generated fallback model.
 * @param {HTMLElement} el
 * @param {{requested?: string, loaded?: string, fallback?: boolean, reason?: string}|undefined} model
 * @returns {boolean} whether the banner is shown
 */
export function showFallbackBanner(el, model) {
  if (model?.fallback !== true) {
    el.hidden = true;
    return false;
  }
  const requested = model.requested ? `“${model.requested}”` : "the configured model";
  const headline = document.createElement("strong");
  headline.textContent = "Fallback model in use — search results are not meaningful. ";
  const detail = document.createTextNode(
    `The platform is running on a generated fallback model${model.loaded ? ` (${model.loaded})` : ""} ` +
      `because ${requested} could not be loaded.`,
  );
  const parts = [headline, detail];
  if (model.reason) {
    const reason = document.createElement("span");
    reason.className = "banner__reason";
    reason.textContent = `Reason: ${model.reason}`;
    parts.push(reason);
  }
  el.replaceChildren(...parts);
  el.hidden = false;
  return true;
}
