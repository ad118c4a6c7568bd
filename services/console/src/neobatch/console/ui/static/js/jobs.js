// The jobs list: newest first, a page at a time from the server (limit + after cursor), with a
// status filter the server applies; refreshed every few seconds.

import { api, ApiError } from "./api.js";
import { errorBox, fill, h, link, progress, statusBadge, usd, when } from "./dom.js";

export const STATUSES = [
  "queued", "resource_preparing", "submitting", "batch_created", "in_progress", "finalizing",
  "cancelling", "completed", "failed", "expired", "cancelled", "resource_failed", "submit_failed",
];
const ACTIVE = STATUSES.slice(0, 7);
const REFRESH_MS = 3000;

export function jobsPage(main, params) {
  const state = {
    status: params.get("status") || "",
    limit: Number(params.get("limit")) || 20,
    cursors: [], // `after` of each earlier page, to go back
    after: "",
  };
  let timer;
  let stopped = false;

  const filter = h("select", { id: "status-filter", onchange: () => {
    state.status = filter.value;
    state.cursors = [];
    state.after = "";
    load();
  } },
  h("option", { value: "" }, "all statuses"),
  h("option", { value: "active" }, "active (not finished)"),
  STATUSES.map((s) => h("option", { value: s }, s)));
  filter.value = state.status;
  const size = h("select", { id: "page-size", onchange: () => {
    state.limit = Number(size.value);
    state.cursors = [];
    state.after = "";
    load();
  } }, [20, 50, 100].map((n) => h("option", { value: n }, `${n} a page`)));
  size.value = String(state.limit);
  const prev = h("button", { id: "prev-page", type: "button", class: "secondary", onclick: () => {
    state.after = state.cursors.pop() || "";
    load();
  } }, "← Newer");
  const next = h("button", { id: "next-page", type: "button", class: "secondary", onclick: () => {
    state.cursors.push(state.after);
    state.after = next.dataset.after;
    load();
  } }, "Older →");
  const body = h("tbody", { id: "jobs-body" });
  const problem = h("div");
  const pageInfo = h("span", { class: "muted", id: "page-info" });

  fill(main,
    h("div", { class: "toolbar" }, h("h1", {}, "Jobs"), h("span", { class: "spacer" }),
      h("label", {}, "Status ", filter), size),
    problem,
    h("table", { class: "grid", id: "jobs" },
      h("thead", {}, h("tr", {}, ["Job", "Status", "Progress", "Failed", "Cost", "Created"]
        .map((c) => h("th", {}, c)))),
      body),
    h("div", { class: "toolbar" }, prev, next, pageInfo));

  let loads = 0; // a newer load (a filter or page change) wins over one still in flight

  async function load() {
    clearTimeout(timer);
    const mine = ++loads;
    let wait;
    const statuses = state.status === "active" ? ACTIVE : state.status ? [state.status] : [];
    try {
      const page = await api("/api/v1/jobs", {
        query: { limit: state.limit, after: state.after, status: statuses },
      });
      if (stopped || mine !== loads) return;
      fill(problem);
      fill(body, page.jobs.length ? page.jobs.map(row)
        : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No jobs.")));
      prev.disabled = state.cursors.length === 0 && !state.after;
      next.disabled = !page.has_more;
      next.dataset.after = page.last_id || "";
      fill(pageInfo, `page ${state.cursors.length + 1}`);
      wait = REFRESH_MS;
    } catch (error) {
      if (stopped || mine !== loads) return;
      fill(problem, errorBox(error));
      wait = error instanceof ApiError && error.status === 429 ? 10_000 : REFRESH_MS;
    }
    if (!stopped) timer = setTimeout(load, wait);
  }

  function row(job) {
    return h("tr", { dataset: { jobId: job.id } },
      h("td", {}, link(job.name || job.id, "jobs", job.id),
        job.name ? h("div", { class: "muted small" }, job.id) : null),
      h("td", {}, statusBadge(job.status)),
      h("td", {}, progress(job.request_counts)),
      h("td", { class: "num" }, job.request_counts?.failed ?? 0),
      h("td", { class: "num" }, usd(job.bill?.total_usd)),
      h("td", {}, when(job.created_at)));
  }

  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
