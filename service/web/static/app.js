// glimpse's web page: pick a model, explain an image or a row, with the same JSON routes any
// client calls (GET /models, GET /models/{name}, POST /explanations/{name}). No framework, no
// build step: this file is served as it is.
"use strict";

const TOKEN_KEY = "glimpse.token";
const $ = (id) => document.getElementById(id);
const state = { model: null, file: null, originalUrl: null };

// -- the API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// fetch `path` with the token (when one was given); the JSON body, or an ApiError carrying the
// API's own {"code", "message"}. A 401 with a Bearer challenge shows the token field.
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.set("Authorization", `Bearer ${token}`);
  const response = await fetch(path, { ...options, headers });
  if (response.ok) return response.json();
  let body;
  try {
    body = await response.json();
  } catch {
    body = {};
  }
  const challenge = response.headers.get("WWW-Authenticate") || "";
  if (response.status === 401 && /^bearer/i.test(challenge)) showTokenPanel();
  throw new ApiError(
    response.status,
    body.code || `http_${response.status}`,
    body.message || `${response.status} ${response.statusText}`,
  );
}

function showError(error) {
  $("error-code").textContent = error instanceof ApiError ? `${error.status} ${error.code}` : "";
  $("error-message").textContent = error.message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error-code").textContent = "";
  $("error-message").textContent = "";
}

// Run `work` with `button` disabled and relabelled; its errors are shown in the page.
async function busy(button, label, work) {
  const text = button.textContent;
  button.disabled = true;
  button.textContent = label;
  clearError();
  try {
    await work();
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
    button.textContent = text;
  }
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

const modelPath = (route) => `/${route}/${encodeURIComponent(state.model.name)}`;

// -- token -----------------------------------------------------------------------------------

function showTokenPanel() {
  $("token-panel").hidden = false;
  $("token").focus();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  $("token-panel").hidden = true;
  clearError();
  loadModels().catch(showError);
});

// -- models ----------------------------------------------------------------------------------

async function loadModels() {
  const { models } = await api("/models");
  const select = $("model");
  const previous = select.value;
  select.replaceChildren(
    ...models.map((m) => el("option", { value: m.name, textContent: `${m.name} (${m.kind})` })),
  );
  if (models.some((m) => m.name === previous)) select.value = previous;
  if (models.length) await loadModel(select.value);
  else showError(new Error("this server serves no model yet"));
}

async function loadModel(name) {
  const description = await api(`/models/${encodeURIComponent(name)}`);
  state.model = description;
  $("model-kind").textContent = description.kind;
  $("image-panel").hidden = description.kind !== "image";
  $("tabular-panel").hidden = description.kind !== "tabular";
  $("image-results").hidden = true;
  $("tabular-results").hidden = true;
  if (description.kind === "image") buildImageForm(description);
  else if (description.kind === "tabular") buildTabularForm(description);
}

$("model").addEventListener("change", () => {
  clearError();
  loadModel($("model").value).catch(showError);
});

// -- images ----------------------------------------------------------------------------------

function buildImageForm(model) {
  const methods = model.explanations;
  const checked = methods.some((m) => m.name === "activation") ? "activation" : methods[0]?.name;
  $("methods").replaceChildren(
    ...methods.map((m) =>
      el(
        "label",
        { className: "method", title: m.summary || "" },
        el("input", { type: "checkbox", name: "method", value: m.name, checked: m.name === checked }),
        el("span", { textContent: m.name }),
      ),
    ),
  );
  $("target").replaceChildren(
    el("option", { value: "", textContent: "predicted class" }),
    ...(model.classes || []).map((c) => el("option", { value: c, textContent: c })),
  );
  const layers = model.layers || [];
  $("layer-label").hidden = layers.length === 0;
  const fallback = model.default_layer ? `default (${model.default_layer})` : "default";
  $("layer").replaceChildren(
    el("option", { value: "", textContent: fallback }),
    ...layers.map((l) =>
      el("option", { value: l.name, textContent: `${l.name} · ${l.type} ${l.shape.join("×")}` }),
    ),
  );
  updateMethodOptions();
}

const chosenMethods = () =>
  [...document.querySelectorAll('#methods input[name="method"]:checked')].map((i) => i.value);

const methodInfo = (name) => state.model.explanations.find((m) => m.name === name);

// The layer choice applies to the chosen methods that take `layer`; the parameter inputs
// shown are those of the chosen methods.
function updateMethodOptions() {
  const chosen = chosenMethods().map(methodInfo);
  $("layer").disabled = !chosen.some((m) => "layer" in m.params);
  const groups = chosen
    .map((m) => paramGroup(m))
    .filter((group) => group !== null);
  $("params").replaceChildren(
    ...(groups.length ? groups : [el("p", { className: "hint", textContent: "none to set" })]),
  );
}

function paramGroup(method) {
  const names = Object.keys(method.params).filter((p) => p !== "layer");
  if (!names.length) return null;
  return el(
    "fieldset",
    { className: "param-group" },
    el("legend", { textContent: method.name }),
    ...names.map((p) => paramInput(method.name, p, method.params[p])),
  );
}

function paramInput(method, name, spec) {
  const initial = spec.default === null || spec.default === undefined ? "" : String(spec.default);
  let input;
  if (spec.choices) {
    input = el("select", {}, ...spec.choices.map((c) => el("option", { value: c, textContent: c })));
    input.value = initial;
  } else if (spec.type === "int" || spec.type === "float") {
    input = el("input", { type: "number", step: spec.type === "int" ? "1" : "any", value: initial });
    if (spec.min !== undefined) input.min = spec.min;
    if (spec.max !== undefined) input.max = spec.max;
    if (!initial) input.placeholder = "auto";
  } else {
    input = el("input", { type: "text", value: initial });
  }
  input.name = `${method}.${name}`;
  input.dataset.initial = initial;
  return el("label", { title: spec.help || "" }, el("span", { textContent: name }), input);
}

function setFile(file) {
  if (!file) return;
  state.file = file;
  if (state.originalUrl) URL.revokeObjectURL(state.originalUrl);
  state.originalUrl = URL.createObjectURL(file);
  $("drop-text").replaceChildren(
    el("img", { src: state.originalUrl, alt: "", className: "thumb" }),
    el("span", { textContent: file.name }),
  );
}

$("methods").addEventListener("change", updateMethodOptions);
$("file").addEventListener("change", () => setFile($("file").files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  setFile(event.dataTransfer.files[0]);
});

function imageQuery() {
  const methods = chosenMethods();
  const query = new URLSearchParams({ methods: methods.join(",") });
  if ($("target").value) query.set("target", $("target").value);
  if ($("layer").value && !$("layer").disabled) query.set("layer", $("layer").value);
  for (const input of $("params").querySelectorAll("[name]")) {
    if (input.value !== "" && input.value !== input.dataset.initial) query.set(input.name, input.value);
  }
  return query;
}

$("image-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy($("explain"), "Explaining…", async () => {
    if (!state.file) throw new Error("choose or drop an image first");
    if (!chosenMethods().length) throw new Error("pick at least one method");
    const body = await api(`${modelPath("explanations")}?${imageQuery()}`, {
      method: "POST",
      headers: { "Content-Type": state.file.type || "application/octet-stream" },
      body: state.file,
    });
    showImageResult(body);
  });
});

function overlaySource(map) {
  const key = Object.keys(map).find((k) => k.startsWith("overlay_") && typeof map[k] === "string");
  if (!key) return null;
  return `data:image/${key.slice("overlay_".length)};base64,${map[key]}`;
}

function showImageResult(body) {
  const cards = [
    el(
      "figure",
      { className: "shot original" },
      el("img", { src: state.originalUrl, alt: "original" }),
      el("figcaption", {}, el("strong", { textContent: "original" })),
    ),
  ];
  for (const [method, map] of Object.entries(body.explanations)) {
    const source = overlaySource(map);
    const stack = el("div", { className: "stack" }, el("img", { src: state.originalUrl, alt: "" }));
    if (source) stack.append(el("img", { src: source, alt: `${method} overlay`, className: "overlay" }));
    const about = `${map.signed ? "signed" : "unsigned"} · ${map.width}×${map.height} map`;
    cards.push(
      el(
        "figure",
        { className: "shot", title: map.reduction || "" },
        stack,
        el(
          "figcaption",
          {},
          el("strong", { textContent: method }),
          el("span", { className: "hint", textContent: about }),
        ),
      ),
    );
  }
  $("gallery").replaceChildren(...cards);
  applyOpacity();
  const ranked = Object.entries(body.prediction).sort((a, b) => b[1] - a[1]);
  $("top-label").textContent = ranked.length ? ranked[0][0] : "";
  $("top-label").title = `explained target: ${body.target.label}`;
  $("prediction").replaceChildren(...ranked.map(([label, p]) => probabilityBar(label, p, body.target.label)));
  showTimings($("timings"), body.timings_ms);
  $("image-results").hidden = false;
}

function probabilityBar(label, probability, target) {
  const fill = el("span", { className: "fill" });
  fill.style.width = `${(probability * 100).toFixed(2)}%`;
  const item = el(
    "li",
    { className: label === target ? "bar target" : "bar" },
    el("span", { className: "name", textContent: label }),
    el("span", { className: "track" }, fill),
    el("span", { className: "value", textContent: `${(probability * 100).toFixed(1)}%` }),
  );
  item.dataset.label = label;
  item.dataset.value = String(probability);
  return item;
}

function showTimings(table, timings) {
  const entries = Object.entries(timings || {});
  const longest = Math.max(...entries.map(([, ms]) => ms), 1e-9);
  const rows = entries.map(([stage, ms]) => {
    const fill = el("span", { className: "fill" });
    fill.style.width = `${((ms / longest) * 100).toFixed(1)}%`;
    const row = el(
      "tr",
      {},
      el("th", { textContent: stage, scope: "row" }),
      el("td", { className: "track" }, fill),
      el("td", { className: "ms", textContent: `${ms.toFixed(1)} ms` }),
    );
    row.dataset.stage = stage;
    return row;
  });
  const total = entries.reduce((sum, [, ms]) => sum + ms, 0);
  rows.push(
    el(
      "tr",
      { className: "total" },
      el("th", { textContent: "total", scope: "row" }),
      el("td"),
      el("td", { className: "ms", textContent: `${total.toFixed(1)} ms` }),
    ),
  );
  table.replaceChildren(...rows);
}

function applyOpacity() {
  const value = Number($("opacity").value);
  $("opacity-value").textContent = `${value}%`;
  $("gallery").style.setProperty("--overlay-opacity", String(value / 100));
}

$("opacity").addEventListener("input", applyOpacity);

// -- tabular rows ----------------------------------------------------------------------------

function buildTabularForm(model) {
  // A date the model has seen (its validation split starts there) when the archive says one.
  const seen = model.metadata?.data?.split?.valid_from;
  const day = seen || new Date().toISOString().slice(0, 10);
  const fields = model.input.columns.map((column) => {
    let input;
    if (column.type === "categorical") {
      input = el(
        "select",
        {},
        ...column.categories.map((c) => el("option", { value: c, textContent: c })),
      );
    } else if (column.type === "date") {
      input = el("input", { type: "date", value: day });
    } else if (column.type === "continuous") {
      input = el("input", { type: "number", step: "any" });
    } else {
      input = el("input", { type: "text" });
    }
    input.name = column.name;
    input.required = Boolean(column.required);
    input.dataset.type = column.type;
    const note = column.missing || column.format || (column.required ? "" : "optional");
    if (column.missing && input.type === "number") input.placeholder = "empty: training median";
    return el(
      "label",
      { className: "field" },
      el("span", { className: "name", textContent: column.name }),
      input,
      note ? el("small", { className: "hint", textContent: note }) : null,
    );
  });
  $("columns").replaceChildren(...fields);
}

// The row as the API takes it: categories and dates as strings, numbers as numbers; an empty
// optional field is left out (the model fills it as its schema says).
function formRow() {
  const row = {};
  for (const input of $("columns").querySelectorAll("[name]")) {
    if (input.value === "") continue;
    row[input.name] = input.dataset.type === "continuous" ? Number(input.value) : input.value;
  }
  return row;
}

$("tabular-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy($("explain-row"), "Explaining…", async () => {
    const body = await api(modelPath("explanations"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(formRow()),
    });
    showRowResult(body);
  });
});

// A signed value in a few characters: +0.0123, −3.28e-4, 0.
function signed(value) {
  if (value === 0) return "0";
  const size = Math.abs(value);
  return (value > 0 ? "+" : "−") + (size < 1e-3 ? size.toExponential(2) : size.toPrecision(3));
}

function showRowResult(body) {
  const row = body.rows[0];
  const prediction = $("tab-prediction");
  prediction.textContent = Number(row.prediction).toLocaleString("en", { maximumFractionDigits: 2 });
  prediction.dataset.value = String(row.prediction);
  $("tab-target").textContent = state.model.target ? `${state.model.target} ≈` : "";
  const method = "integrated_gradients" in row.attributions
    ? "integrated_gradients"
    : Object.keys(row.attributions)[0];
  const attributions = Object.entries(row.attributions[method]).sort(
    (a, b) => Math.abs(b[1]) - Math.abs(a[1]),
  );
  const sum = attributions.reduce((total, [, v]) => total + v, 0);
  const base = $("tab-sum");
  base.dataset.baseValue = String(row.base_value);
  base.textContent =
    `base value ${row.base_value.toPrecision(5)} ${sum < 0 ? "−" : "+"} attributions ` +
    `${Math.abs(sum).toPrecision(3)} = ${(row.base_value + sum).toPrecision(5)} ` +
    "(the model's output space)";
  $("attr-method").textContent = `${method}, largest first`;
  const largest = Math.max(...attributions.map(([, v]) => Math.abs(v)), 1e-12);
  $("attributions").replaceChildren(...attributions.map(([c, v]) => attributionBar(c, v, largest)));
  showTimings($("tab-timings"), body.timings_ms);
  $("tabular-results").hidden = false;
}

function attributionBar(column, value, largest) {
  const fill = el("span", { className: value < 0 ? "fill negative" : "fill positive" });
  fill.style.width = `${((Math.abs(value) / largest) * 50).toFixed(2)}%`;
  const item = el(
    "li",
    { className: "attr" },
    el("span", { className: "name", textContent: column }),
    el("span", { className: "track" }, fill),
    el("span", { className: "value", textContent: signed(value) }),
  );
  item.dataset.column = column;
  item.dataset.value = String(value);
  return item;
}

loadModels().catch(showError);
