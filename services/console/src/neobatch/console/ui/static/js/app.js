// The console's one page: a router over the URL fragment (#/jobs, #/jobs/<id>, #/templates,
// #/models) and the login form. Each view renders into <main> and returns a function that
// stops whatever it polls when the user leaves it.

import { api, ApiError, session } from "./api.js";
import { errorBox, fill, h } from "./dom.js";
import { jobsPage } from "./jobs.js";
import { jobPage } from "./job.js";
import { modelsPage, templatesPage } from "./catalog.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const logout = document.getElementById("logout");
let leave = () => {};

function loginPage(notice) {
  const key = h("input", {
    id: "api-key", type: "password", autocomplete: "off", required: true,
    placeholder: "nb-...", spellcheck: "false",
  });
  const problem = h("div", { id: "login-error" }, notice ? errorBox(notice) : null);
  const submit = h("button", { id: "login", type: "submit" }, "Log in");
  const form = h("form", { class: "card login", onsubmit: async (event) => {
    event.preventDefault();
    submit.disabled = true;
    fill(problem);
    try {
      const typed = key.value.trim();
      // Any read proves the key; an operator-only read tells which role it has.
      await api("/api/v1/jobs", { query: { limit: 1 }, key: typed });
      let role = "project";
      try {
        await api("/api/v1/keys", { query: { limit: 1 }, key: typed });
        role = "operator";
      } catch (error) {
        if (!(error instanceof ApiError) || error.status !== 403) throw error;
      }
      session.save(typed, role);
      key.value = "";
      if (!location.hash || location.hash === "#/login") location.hash = "#/jobs";
      else render();
    } catch (error) {
      fill(problem, errorBox(error));
    } finally {
      submit.disabled = false;
    }
  } },
  h("h1", {}, "Log in"),
  h("p", { class: "muted" },
    "Paste an API key. It stays in this browser tab only (sessionStorage) and is sent as a " +
    "bearer token to the console's API; closing the tab forgets it."),
  h("label", { for: "api-key" }, "API key"), key, submit, problem);
  fill(main, form);
  key.focus();
  return () => {};
}

function render() {
  leave();
  leave = () => {};
  const hash = location.hash.replace(/^#\/?/, "");
  const [page, ...rest] = hash.split("/").map((part) => decodeURIComponent(part));
  if (!session.key) {
    nav.hidden = true;
    logout.hidden = true;
    fill(who);
    leave = loginPage();
    return;
  }
  nav.hidden = false;
  logout.hidden = false;
  fill(who, session.role === "operator" ? "operator key" : "project key");
  for (const a of nav.querySelectorAll("a")) {
    a.classList.toggle("active", a.dataset.nav === (page || "jobs"));
  }
  if (page === "jobs" && rest[0]) leave = jobPage(main, rest[0]);
  else if (page === "templates") leave = templatesPage(main, session.role);
  else if (page === "models") leave = modelsPage(main, session.role);
  else leave = jobsPage(main, new URLSearchParams(hash.split("?")[1] || ""));
}

logout.addEventListener("click", () => {
  session.clear();
  location.hash = "#/login";
  render();
});
window.addEventListener("neobatch:logged-out", (event) => {
  leave();
  leave = loginPage({ code: "unauthorized", message: event.detail });
  nav.hidden = true;
  logout.hidden = true;
});
window.addEventListener("hashchange", render);
render();
