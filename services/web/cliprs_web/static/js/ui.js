/** Small page widgets: the error area, status lines, the fallback banner, copy and download. */

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
    for (const [key, message] of this.messages) {
      const item = document.createElement("li");
      item.dataset.key = key;
      item.textContent = message;
      list.append(item);
    }
    this.el.replaceChildren(title, list);
    this.el.hidden = false;
  }
}

/** Set a polite status line (screen readers announce it). */
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
  const detail = document.createElement("span");
  detail.className = "banner__detail";
  detail.textContent =
    `The platform is running on a generated fallback model${model.loaded ? ` (${model.loaded})` : ""} ` +
    `because ${requested} could not be loaded.`;
  const parts = [headline, detail];
  if (model.reason) {
    const reason = document.createElement("details");
    reason.className = "banner__reason";
    const summary = document.createElement("summary");
    summary.textContent = "Why, and how to fix it";
    const text = document.createElement("span");
    text.textContent =
      `${String(model.reason).replace(/[.\s]+$/, "")}. Put the model in the Hugging Face cache or set CLIP_MODEL to a local folder, ` +
      "then restart the platform.";
    reason.append(summary, text);
    parts.push(reason);
  }
  el.replaceChildren(...parts);
  el.hidden = false;
  return true;
}

/** Put text on the clipboard; true when it worked. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Clipboard API refused (no permission, insecure origin): the old way still works mostly.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
    area.remove();
    return ok;
  }
}

/** Offer `data` as a JSON file download named `filename`. */
export function downloadJson(data, filename, type = "application/geo+json") {
  const blob = new Blob([JSON.stringify(data, null, 2)], { type });
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** A file-name-safe slug of a text. */
export function slug(text, max = 40) {
  return String(text).toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, max) || "results";
}

/** Run `fn` at most once per `ms` milliseconds of quiet (for live input). */
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/**
 * Ask for an API key in the page's dialog (`#api-key-dialog`): shows why the API refused (its
 * message), resolves to the typed key, or null when cancelled. Concurrent refusals share one
 * dialog.
 * @param {HTMLDialogElement} dialog
 */
export function keyPrompter(dialog) {
  let pending = null;
  return ({ status, message }) => {
    if (pending) return pending;
    const input = dialog.querySelector("input");
    dialog.querySelector("#api-key-reason").textContent =
      `${status === 403 ? "This key may not do that" : "The API needs a key"}: ${message}`;
    input.value = "";
    pending = new Promise((resolve) => {
      dialog.addEventListener(
        "close",
        () => {
          pending = null;
          resolve(dialog.returnValue === "ok" && input.value.trim() ? input.value.trim() : null);
        },
        { once: true },
      );
    });
    dialog.showModal();
    input.focus();
    return pending;
  };
}
