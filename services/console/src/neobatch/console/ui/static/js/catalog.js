// Models and their deployment templates: read by every key; an operator also creates a model,
// and a template from pasted YAML or JSON (the console's error code is shown when it refuses).

import { all, api } from "./api.js";
import { errorBox, fill, h, when } from "./dom.js";
import { parseTemplate, YamlError } from "./yaml.js";

/** A table whose rows `reload()` reads again: `read` fetches the items, `row` draws one. */
function listing(id, columns, empty, read, row) {
  const body = h("tbody", { id: `${id}-body` });
  const problem = h("div");
  const table = h("table", { class: "grid", id },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))), body);
  let stopped = false;
  async function reload() {
    try {
      const items = await read();
      if (stopped) return;
      fill(body, items.length ? items.map(row)
        : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, empty)));
      fill(problem);
    } catch (error) {
      if (!stopped) fill(problem, errorBox(error));
    }
  }
  return { table, problem, reload, stop: () => { stopped = true; } };
}

export function templatesPage(main, role) {
  const spec = h("pre", { id: "template-spec", class: "spec", hidden: true });
  const list = listing("templates",
    ["Model", "Name", "Version", "Status", "Owner", "GPU", "Created"], "No templates.",
    async () => {
      const models = await all("/api/v1/models");
      const lists = await Promise.all(models.map((m) =>
        all(`/api/v1/models/${encodeURIComponent(m.id)}/deployment-templates`)));
      return lists.flat();
    },
    (t) => h("tr", { dataset: { template: `${t.name}@${t.version}` } },
      h("td", {}, t.model_id),
      h("td", {}, h("button", { type: "button", class: "linklike", onclick: () => {
        spec.hidden = false;
        fill(spec, `# ${t.name}@${t.version} (${t.id})\n${JSON.stringify(t.spec, null, 2)}`);
      } }, t.name)),
      h("td", {}, t.version),
      h("td", {}, t.status, role === "operator" ? statusButton(t) : null),
      h("td", {}, t.project ?? "published"),
      h("td", {}, gpu(t.spec)), h("td", {}, when(t.created_at))));

  // An operator deprecates a version (it then runs only when named exactly) or reactivates it.
  function statusButton(t) {
    const next = t.status === "active" ? "deprecated" : "active";
    return h("button", { type: "button", class: "secondary small", dataset: { setStatus: next },
      onclick: async () => {
        try {
          await api(`/api/v1/models/${encodeURIComponent(t.model_id)}/deployment-templates/` +
            encodeURIComponent(t.id), { method: "PUT", body: { status: next } });
          list.reload();
        } catch (error) {
          fill(list.problem, errorBox(error, { scroll: true }));
        }
      } }, next === "active" ? "Reactivate" : "Deprecate");
  }

  const form = role === "operator" ? templateForm(list.reload) : h("p", { class: "muted" },
    "Templates are published by operators; an operator key can create one here.");
  fill(main, h("div", { class: "toolbar" }, h("h1", {}, "Deployment templates")), list.problem,
    list.table, spec, form);
  list.reload();
  return list.stop;
}

function gpu(spec) {
  const a = spec?.accelerator;
  return a ? `${a.count ?? 1}× ${a.type ?? "?"}` : "—";
}

const EXAMPLE = `name: my-template
version: v1.0.0
model_id: model-...
spec:
  engine:
    type: vllm
    port: 8000
  model_source:
    type: huggingface
    uri: org/model
  accelerator:
    type: H100
    count: 1
  supported_endpoints: [/v1/chat/completions]
`;

function templateForm(reload) {
  const text = h("textarea", { id: "template-text", rows: 16, spellcheck: "false", placeholder: EXAMPLE });
  const model = h("input", { id: "template-model", placeholder: "model id (else the text's model_id)" });
  const result = h("div", { id: "template-result" });
  const submit = h("button", { type: "submit", id: "create-template" }, "Create template");
  return h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    fill(result);
    let body;
    try {
      body = parseTemplate(text.value);
    } catch (error) {
      if (!(error instanceof YamlError)) throw error;
      fill(result, errorBox({ code: "bad_template_text", message: error.message }, { scroll: true }));
      return;
    }
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      fill(result, errorBox({ code: "bad_template_text", message: "the text must hold a mapping" }, { scroll: true }));
      return;
    }
    const modelId = model.value.trim() || body.model_id;
    if (!modelId) {
      fill(result, errorBox({ code: "no_model", message: "which model? fill in the model id" }, { scroll: true }));
      return;
    }
    submit.disabled = true;
    try {
      const created = await api(`/api/v1/models/${encodeURIComponent(modelId)}/deployment-templates`,
        { method: "POST", body });
      fill(result, h("div", { class: "notice" },
        `created ${created.name}@${created.version} (${created.id})`));
      reload();
    } catch (error) {
      fill(result, errorBox(error, { scroll: true }));
    } finally {
      submit.disabled = false;
    }
  } },
  h("h2", {}, "New template (operator)"),
  h("p", { class: "muted" }, "Paste the template as YAML or JSON, in the API's shape."),
  h("label", { for: "template-model" }, "Model id"), model,
  h("label", { for: "template-text" }, "Template"), text, submit, result);
}

export function modelsPage(main, role) {
  const list = listing("models",
    ["Id", "Name", "Serving name", "Categories", "Default template", "Created"], "No models.",
    () => all("/api/v1/models"),
    (m) => h("tr", {},
      h("td", {}, m.id), h("td", {}, m.name), h("td", {}, m.serving_name),
      h("td", {}, (m.categories || []).join(", ")), h("td", {}, m.default_template || "—"),
      h("td", {}, when(m.created_at))));
  fill(main, h("div", { class: "toolbar" }, h("h1", {}, "Models")), list.problem, list.table,
    role === "operator" ? modelForm(list.reload) : null);
  list.reload();
  return list.stop;
}

function modelForm(reload) {
  const name = h("input", { id: "model-name", required: true });
  const serving = h("input", { id: "model-serving-name", required: true });
  const result = h("div", { id: "model-result" });
  return h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    try {
      const created = await api("/api/v1/models", { method: "POST", body: {
        name: name.value.trim(), serving_name: serving.value.trim(), categories: ["LLM"],
      } });
      fill(result, h("div", { class: "notice" }, `created ${created.id}`));
      reload();
    } catch (error) {
      fill(result, errorBox(error, { scroll: true }));
    }
  } },
  h("h2", {}, "New model (operator)"),
  h("label", { for: "model-name" }, "Name"), name,
  h("label", { for: "model-serving-name" }, "Serving name (what batch lines put in body.model)"),
  serving, h("button", { type: "submit" }, "Create model"), result);
}
