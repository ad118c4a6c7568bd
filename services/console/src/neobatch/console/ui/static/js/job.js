// One job: counts and progress (polled while it runs, with rate and ETA worked out between
// polls), cost, the event timeline (/events), its machines, errors, its files (downloaded with
// the key), Cancel and Retry.

import { api, ApiError, download } from "./api.js";
import {
  duration, errorBox, fill, h, link, progress, route, statusBadge, TERMINAL, usd, when,
} from "./dom.js";

const POLL_MS = 1000;
const SETTLE_MS = 3000;
const BACKOFF_MS = 10_000; // after a 429 (rate_limited)

export function jobPage(main, jobId) {
  const path = `/api/v1/jobs/${encodeURIComponent(jobId)}`;
  let timer;
  let stopped = false;
  let samples = []; // [ms, finished lines] of recent polls, for the rate
  let events = [];
  let shownSteps = null;

  const title = h("h1", { id: "job-title" }, jobId);
  const status = h("span", { id: "job-status" });
  const actionsMsg = h("div", { id: "action-message" });
  const cancel = h("button", { id: "cancel-job", type: "button", class: "danger", onclick: onCancel },
    "Cancel job");
  const retry = h("button", { id: "retry-job", type: "button", onclick: onRetry },
    "Retry failed lines");
  const summary = h("dl", { class: "facts", id: "job-summary" });
  const counts = h("div", { id: "job-progress" });
  const errors = h("div", { id: "job-errors" });
  const files = h("div", { id: "job-files" });
  const timeline = h("ol", { class: "timeline", id: "job-timeline" });
  const machines = h("tbody", { id: "job-machines" });
  const problem = h("div");

  fill(main,
    h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")),
    h("div", { class: "toolbar" }, title, status, h("span", { class: "spacer" }), cancel, retry),
    actionsMsg, problem,
    h("section", { class: "card" }, h("h2", {}, "Progress"), counts),
    errors,
    h("div", { class: "columns" },
      h("section", { class: "card" }, h("h2", {}, "Details"), summary),
      h("section", { class: "card" }, h("h2", {}, "Timeline"), timeline)),
    h("section", { class: "card" }, h("h2", {}, "Machines"),
      h("table", { class: "grid" },
        h("thead", {}, h("tr", {}, ["Provision", "Provider", "GPU", "Price/h", "Status", "Lines"]
          .map((c) => h("th", {}, c)))),
        machines)),
    h("section", { class: "card" }, h("h2", {}, "Files"), files));

  async function load() {
    clearTimeout(timer);
    let job;
    let wait = POLL_MS;
    try {
      job = await api(path);
      // The timeline changes only with a new step: read it again only then.
      const steps = (job.events || []).map((e) => e.id).join(",");
      if (steps !== shownSteps) {
        events = (await api(`${path}/events`)).data || [];
        shownSteps = steps;
      }
      if (stopped) return;
      fill(problem);
      show(job, events);
    } catch (error) {
      if (stopped) return;
      fill(problem, errorBox(error));
      if (error instanceof ApiError && error.status === 429) wait = BACKOFF_MS;
    }
    // After the end, slower, until every machine's release is confirmed and the bill is final.
    const ended = job && TERMINAL.has(job.status);
    if (ended) wait = SETTLE_MS;
    if (!stopped && !(ended && job.bill?.final)) timer = setTimeout(load, wait);
  }

  function show(job, events) {
    fill(title, job.name || job.id);
    fill(status, statusBadge(job.status));
    const terminal = TERMINAL.has(job.status);
    cancel.hidden = terminal;
    cancel.disabled = Boolean(job.cancel_requested_at);
    // Retry makes a job of the failed and unfinished lines: none when every line completed.
    const c = job.request_counts || {};
    retry.hidden = !terminal || (c.total > 0 && c.completed >= c.total);
    showCounts(job, terminal);
    fill(summary, ...facts([
      ["Job id", job.id],
      ["Batch id", job.batch_id],
      ["Model", job.model || job.model_id],
      ["Template", [job.model_template_name, job.model_template_version].filter(Boolean).join("@")],
      ["Endpoint", job.endpoint],
      ["Created", when(job.created_at)],
      ["Window", job.completion_window],
      ["Cost", `${usd(job.bill?.total_usd)}${job.bill?.final ? "" : " so far"}`],
      ["Cost cap", job.max_cost_usd == null ? null : usd(job.max_cost_usd)],
      ["Tokens", `${job.usage?.input_tokens ?? 0} in / ${job.usage?.output_tokens ?? 0} out`],
      ["Retry of", job.retry_of ? link(job.retry_of, "jobs", job.retry_of) : null],
      ["Retried by", (job.retried_by || []).length
        ? job.retried_by.flatMap((id, i) => [i ? ", " : null, link(id, "jobs", id)]) : null],
      ["Metadata", Object.keys(job.metadata || {}).length
        ? Object.entries(job.metadata).map(([k, v]) => h("div", {}, h("code", {}, k), " = ", v))
        : null],
    ]));
    fill(timeline, events.length ? events.map((e) => h("li", { dataset: { event: e.id } },
      h("span", { class: "time" }, when(e.at)), " ", h("strong", {}, e.label), " ",
      h("span", { class: "muted" }, `(${e.source})`), h("div", { class: "small" }, e.message)))
      : h("li", { class: "muted" }, "No events yet."));
    const items = job.machines?.items || [];
    fill(machines, items.length ? items.map((m) => h("tr", {},
      h("td", {}, m.provision_id), h("td", {}, m.provider), h("td", {}, m.gpu_type ?? "—"),
      h("td", { class: "num" }, usd(m.price_per_hour)), h("td", {}, m.status),
      // Lines per machine are reported for batches on several machines.
      h("td", { class: "num" }, m.lines || "—")))
      : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No machine yet.")));
    const problems = [];
    if (job.error_code || job.error_message) {
      problems.push(errorBox({ code: job.error_code || job.status, message: job.error_message || "" }));
    }
    if (job.provision?.error_message && !job.error_message) {
      problems.push(errorBox({ code: "provision", message: job.provision.error_message }));
    }
    fill(errors, problems.length ? h("section", { class: "card" }, h("h2", {}, "Errors"), problems)
      : null);
    fill(files, h("ul", { class: "files" },
      fileItem("Input", job.input_dataset, "download-input"),
      fileItem("Output", job.output_dataset, "download-output"),
      fileItem("Errors", job.error_dataset, "download-errors")));
  }

  function showCounts(job, terminal) {
    const c = job.request_counts || {};
    const done = (c.completed || 0) + (c.failed || 0);
    const now = Date.now();
    samples.push([now, done]);
    samples = samples.filter(([t]) => now - t <= 30_000);
    const [t0, d0] = samples[0];
    const rate = now > t0 ? ((done - d0) * 1000) / (now - t0) : 0;
    const left = (c.total || 0) - done;
    fill(counts,
      h("div", { class: "big" }, progress(c)),
      h("dl", { class: "facts inline" }, ...facts([
        ["Total", String(c.total ?? 0)],
        ["Completed", h("span", { id: "count-completed" }, String(c.completed ?? 0))],
        ["Failed", h("span", { id: "count-failed" }, String(c.failed ?? 0))],
        ["Rate", terminal ? null : rate > 0 ? `${rate.toFixed(1)} req/s` : "—"],
        ["ETA", terminal || !(rate > 0) ? null : duration(left / rate)],
      ])));
  }

  function fileItem(label, fileId, id) {
    if (!fileId) return h("li", { class: "muted" }, `${label}: none`);
    const note = h("span", { class: "small muted" });
    return h("li", {}, `${label}: `, h("code", {}, fileId), " ",
      h("button", { type: "button", id, class: "secondary", onclick: async () => {
        fill(note, " downloading…");
        try {
          fill(note, ` saved as ${await download(fileId)}`);
        } catch (error) {
          fill(note, errorBox(error));
        }
      } }, "Download"), note);
  }

  async function onCancel() {
    cancel.disabled = true;
    try {
      await api(`${path}/cancel`, { method: "POST", body: {} });
      fill(actionsMsg, h("div", { class: "notice" }, "Cancel requested."));
      load();
    } catch (error) {
      cancel.disabled = false;
      fill(actionsMsg, errorBox(error, { scroll: true }));
    }
  }

  async function onRetry() {
    retry.disabled = true;
    try {
      const created = await api(`${path}/retry`, { method: "POST", body: {} });
      location.hash = route("jobs", created.id);
    } catch (error) {
      retry.disabled = false;
      // A console without the retry route answers 405 (or a 404 that is not about the job).
      const missing = error instanceof ApiError &&
        (error.status === 405 || (error.status === 404 && error.code !== "job_not_found"));
      fill(actionsMsg, missing
        ? errorBox({ code: "not_available", message: "this console cannot retry jobs yet" })
        : errorBox(error));
    }
  }

  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** <dt>/<dd> pairs; rows with a null value are left out. */
function facts(rows) {
  return rows.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]);
}
