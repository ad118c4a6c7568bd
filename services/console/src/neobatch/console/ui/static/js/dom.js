// Building the page: every value that came from the API becomes a text node (textContent),
// never HTML. Links are made only to this console's own routes, from encoded ids.

/** An element: h("td", { class: "num" }, "12", otherNode). Attributes named on* are listeners. */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      node.className = value;
    } else if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else if (name === "value") {
      node.value = value;
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(String(child)));
  }
}

/** Replace a node's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** A link to a page of this console: `#/jobs/<id>`. */
export function route(...parts) {
  return "#/" + parts.map((part) => encodeURIComponent(String(part))).join("/");
}

export function link(text, ...parts) {
  return h("a", { href: route(...parts) }, text);
}

/** Unix seconds → local "2026-12-03 19:20:05". */
export function when(seconds) {
  if (typeof seconds !== "number") return "—";
  const d = new Date(seconds * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function usd(value) {
  if (typeof value !== "number") return "—";
  return value < 0.01 && value > 0 ? `$${value.toFixed(4)}` : `$${value.toFixed(2)}`;
}

export function duration(seconds) {
  if (typeof seconds !== "number" || !isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export const TERMINAL = new Set([
  "completed", "failed", "expired", "cancelled", "resource_failed", "submit_failed",
]);

export function statusBadge(status) {
  return h("span", { class: `badge status-${String(status).replace(/[^a-z_]/g, "")}` }, status);
}

/** A progress bar of finished (completed + failed) out of total. */
export function progress(counts) {
  const total = counts?.total || 0;
  const done = (counts?.completed || 0) + (counts?.failed || 0);
  const pct = total ? Math.min(100, (100 * done) / total) : 0;
  const bar = h("progress", { max: 100, value: pct.toFixed(1) });
  return h("span", { class: "progress" }, bar, ` ${done}/${total}`);
}

/** An error box: the console's stable code and its message, as text; with `scroll` (an answer
 * to something the user just did) it is scrolled into view. */
export function errorBox(error, { scroll = false } = {}) {
  const code = error?.code || "error";
  const box = h("div", { class: "error", role: "alert" },
    h("strong", { class: "code" }, code), ": ", error?.message || String(error));
  if (scroll) requestAnimationFrame(() => box.scrollIntoView({ block: "nearest" }));
  return box;
}
