// The one way the pages reach the console: its public API (/api/v1, the routes the CLI uses),
// with the key the user typed, kept in sessionStorage (this tab only, gone when it closes) and
// sent as `Authorization: Bearer`. No cookie is ever sent (credentials: "omit").

const KEY = "neobatch.apiKey";
const ROLE = "neobatch.role";

export const session = {
  get key() { return sessionStorage.getItem(KEY) || ""; },
  get role() { return sessionStorage.getItem(ROLE) || ""; },
  save(key, role) {
    sessionStorage.setItem(KEY, key);
    sessionStorage.setItem(ROLE, role);
  },
  clear() {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(ROLE);
  },
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** `GET /api/v1/...` (or another method with a JSON body); the parsed JSON, or the raw
 * Response with `raw`. A non-2xx answer throws ApiError with the console's code and message. */
export async function api(path, { method = "GET", body, query, raw = false, key } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    for (const one of Array.isArray(value) ? value : [value]) {
      if (one !== undefined && one !== null && one !== "") url.searchParams.append(name, one);
    }
  }
  const headers = { Authorization: `Bearer ${key ?? session.key}`, Accept: "application/json" };
  const init = { method, headers, credentials: "omit", cache: "no-store", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    throw new ApiError(0, "network_error", `the console did not answer: ${error.message}`);
  }
  if (!response.ok) {
    let code = `http_${response.status}`;
    let message = response.statusText || "request failed";
    try {
      const problem = await response.json();
      code = problem.code || code;
      message = problem.message || message;
    } catch { /* not JSON: keep the status */ }
    if (response.status === 401 && key === undefined) {
      session.clear();
      window.dispatchEvent(new CustomEvent("neobatch:logged-out", { detail: message }));
    }
    throw new ApiError(response.status, code, message);
  }
  return raw ? response : response.json();
}

/** Every row of a paged list (models, templates), up to `cap` rows. */
export async function all(path, query = {}, cap = 1000) {
  const rows = [];
  let after;
  for (;;) {
    const page = await api(path, { query: { ...query, limit: 100, after } });
    rows.push(...(page.data || []));
    if (!page.has_more || !page.last_id || rows.length >= cap) return rows;
    after = page.last_id;
  }
}

/** Fetch a file's content with the key and hand it to the browser as a download (a plain link
 * cannot carry the Authorization header). */
export async function download(fileId) {
  let filename = `${fileId}.jsonl`;
  try {
    const info = await api(`/api/v1/files/${encodeURIComponent(fileId)}`);
    if (info.filename) filename = info.filename.replace(/[\\/]/g, "_");
  } catch { /* the content route decides */ }
  const response = await api(`/api/v1/files/${encodeURIComponent(fileId)}/content`, { raw: true });
  const blob = await response.blob();
  const href = URL.createObjectURL(blob);
  const anchor = document.createElement("a");
  anchor.href = href;
  anchor.download = filename;
  document.body.appendChild(anchor);
  anchor.click();
  anchor.remove();
  setTimeout(() => URL.revokeObjectURL(href), 60_000);
  return filename;
}
