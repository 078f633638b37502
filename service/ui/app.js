// The imgcls page: pick a model, add images, see the top-k and where the model looked, flag mistakes.
// Plain JavaScript against the service's own API (no libraries, no network beyond this origin).
// Everything the server or a user supplies (labels, notes, errors, file names) is inserted as text.
"use strict";

const KEY_STORAGE = "imgcls-api-key";
const TOP_K = 5;
const NONE_OF_THESE = "";

const page = {
  model: document.getElementById("model"),
  version: document.getElementById("version"),
  modelNote: document.getElementById("model-note"),
  keyPanel: document.getElementById("key-panel"),
  keyForm: document.getElementById("key-form"),
  key: document.getElementById("key"),
  drop: document.getElementById("drop"),
  files: document.getElementById("files"),
  status: document.getElementById("status"),
  results: document.getElementById("results"),
  template: document.getElementById("result-template"),
};

// versions of the chosen model, as GET /v1/models/{name} lists them
let versions = [];

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") return body.error;
  } catch (_) {
    // not JSON: fall through to the status line
  }
  return `HTTP ${response.status} ${response.statusText}`.trim();
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY_STORAGE);
    page.keyPanel.hidden = false;
    page.key.focus();
  }
  if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
  return response;
}

function chosenVersion() {
  const ready = versions.filter((v) => v.ready);
  if (page.version.value) return versions.find((v) => v.version === page.version.value);
  return ready[ready.length - 1];
}

function labels() {
  const version = chosenVersion();
  return version && Array.isArray(version.labels) ? version.labels : [];
}

async function loadModels() {
  page.status.textContent = "";
  try {
    const { models } = await (await api("/v1/models")).json();
    page.model.replaceChildren(...models.map((name) => new Option(name, name)));
    if (!models.length) page.status.textContent = "This service has no models.";
    await loadVersions();
  } catch (error) {
    page.status.textContent = error.message;
  }
}

async function loadVersions() {
  versions = [];
  page.version.replaceChildren();
  page.modelNote.textContent = "";
  if (!page.model.value) return;
  try {
    const status = await (await api(`/v1/models/${encodeURIComponent(page.model.value)}`)).json();
    versions = status.versions || [];
    const ready = versions.filter((v) => v.ready);
    const latest = ready[ready.length - 1];
    page.version.append(new Option(latest ? `latest (${latest.version})` : "latest", ""));
    for (const v of versions) {
      const option = new Option(v.ready ? v.version : `${v.version} (not ready)`, v.version);
      option.disabled = !v.ready;
      page.version.append(option);
    }
    describeVersion();
  } catch (error) {
    page.status.textContent = error.message;
  }
}

function describeVersion() {
  const version = chosenVersion();
  const explain = version && version.explain;
  page.modelNote.textContent = !version
    ? "no version is ready"
    : explain && explain.available
      ? `${labels().length} labels; explains with ${explain.methods.join(", ")}`
      : `${labels().length} labels; no explanations${explain && explain.error ? `: ${explain.error}` : ""}`;
}

function addFiles(fileList) {
  const images = Array.from(fileList || []).filter((file) => !file.type || file.type.startsWith("image/"));
  if (fileList && fileList.length && !images.length) page.status.textContent = "Those files are not images.";
  for (const file of images) {
    const item = makeItem(file);
    page.results.prepend(item.element);
    explain(item, null);
  }
}

function makeItem(file) {
  const element = page.template.content.firstElementChild.cloneNode(true);
  const find = (selector) => element.querySelector(selector);
  const item = {
    file,
    element,
    prediction: null,
    requestId: null,
    parts: {
      original: find(".original"),
      overlay: find(".overlay"),
      name: find(".name"),
      error: find(".error"),
      summary: find(".summary"),
      topK: find(".top-k"),
      opacity: find(".opacity"),
      showOriginal: find(".show-original"),
      explainClass: find(".explain-class"),
      explained: find(".explained"),
      wrong: find(".wrong"),
      form: find(".feedback"),
      search: find(".label-search"),
      list: find(".label-list"),
      note: find(".note"),
      cancel: find(".cancel"),
      confirmation: find(".confirmation"),
    },
    model: page.model.value,
    version: page.version.value,
    labels: labels(),
  };
  const p = item.parts;
  p.name.textContent = file.name || "pasted image";
  p.original.src = URL.createObjectURL(file);
  p.overlay.hidden = true;
  p.explainClass.replaceChildren(...item.labels.map((label) => new Option(label, label)));
  p.opacity.addEventListener("input", () => showMap(item));
  p.showOriginal.addEventListener("change", () => showMap(item));
  p.explainClass.addEventListener("change", () => explain(item, p.explainClass.value));
  p.wrong.addEventListener("click", () => openFeedback(item));
  p.cancel.addEventListener("click", () => (p.form.hidden = true));
  p.search.addEventListener("input", () => fillLabelList(item));
  p.form.addEventListener("submit", (event) => {
    event.preventDefault();
    sendFeedback(item);
  });
  return item;
}

function showMap(item) {
  const p = item.parts;
  p.overlay.style.opacity = String(Number(p.opacity.value) / 100);
  p.overlay.hidden = p.showOriginal.checked || !p.overlay.getAttribute("src");
}

function itemPath(item, verb) {
  const name = encodeURIComponent(item.model);
  const base = item.version ? `/v1/models/${name}/versions/${encodeURIComponent(item.version)}` : `/v1/models/${name}`;
  return verb.startsWith(":") ? `${base}${verb}` : `${base}/${verb}`;
}

async function explain(item, label) {
  const p = item.parts;
  p.error.textContent = "";
  const form = new FormData();
  form.append("file", item.file);
  form.append("top_k", String(TOP_K));
  if (label) form.append("label", label);
  const started = performance.now();
  try {
    const response = await api(itemPath(item, ":explain"), { method: "POST", body: form });
    const body = await response.json();
    const answer = body.explanations[0];
    item.prediction = answer;
    item.requestId = response.headers.get("x-request-id");
    showPrediction(item, answer, performance.now() - started);
    p.overlay.src = `data:image/png;base64,${answer.overlay_png}`;
    p.explainClass.value = answer.explained_label;
    p.explained.textContent = `Map: ${answer.method} for "${answer.explained_label}"`;
    showMap(item);
  } catch (error) {
    if (error.status === 501 && !label) {
      // not explainable: still show what the model thinks
      p.error.textContent = `No map: ${error.message}`;
      await predictOnly(item);
    } else {
      p.error.textContent = error.message;
    }
  }
}

async function predictOnly(item) {
  const form = new FormData();
  form.append("file", item.file);
  form.append("top_k", String(TOP_K));
  const started = performance.now();
  try {
    const response = await api(itemPath(item, ":predict"), { method: "POST", body: form });
    const answer = (await response.json()).predictions[0];
    item.prediction = answer;
    item.requestId = response.headers.get("x-request-id");
    showPrediction(item, answer, performance.now() - started);
  } catch (error) {
    item.parts.error.textContent = error.message;
  }
}

function showPrediction(item, answer, latencyMs) {
  const p = item.parts;
  // a multilabel model answers every label above its threshold ("labels"), possibly none
  const present = answer.labels ? new Set(answer.labels.map((entry) => entry.label)) : null;
  const decided = present
    ? `labels: ${answer.labels.map((entry) => entry.label).join(", ") || "none"}`
    : `${answer.label} (${(answer.score * 100).toFixed(1)} %)`;
  p.summary.textContent = `${decided}, ${latencyMs.toFixed(0)} ms`;
  const rows = answer.top_k.map((entry) => {
    const row = document.createElement("li");
    row.title = `explain "${entry.label}"`;
    if (present && present.has(entry.label)) row.className = "present";
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = entry.label;
    const track = document.createElement("span");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.display = "block";
    bar.style.width = `${Math.max(0, Math.min(1, entry.score)) * 100}%`;
    track.append(bar);
    const score = document.createElement("span");
    score.textContent = entry.score.toFixed(3);
    row.append(name, track, score);
    row.addEventListener("click", () => explain(item, entry.label));
    return row;
  });
  p.topK.replaceChildren(...rows);
}

function fillLabelList(item) {
  const p = item.parts;
  const wanted = p.search.value.trim().toLowerCase();
  const matching = item.labels.filter((label) => label.toLowerCase().includes(wanted));
  const options = matching.map((label) => new Option(label, label));
  options.push(new Option("none of these", NONE_OF_THESE));
  p.list.replaceChildren(...options);
}

function openFeedback(item) {
  const p = item.parts;
  p.confirmation.textContent = "";
  p.form.hidden = false;
  p.search.value = "";
  fillLabelList(item);
  p.search.focus();
}

async function sendFeedback(item) {
  const p = item.parts;
  if (p.list.selectedIndex < 0) {
    p.error.textContent = "Pick the correct label (or none of these).";
    return;
  }
  const form = new FormData();
  form.append("file", item.file);
  form.append("correct_label", p.list.value);
  if (item.prediction) {
    form.append("predicted_label", item.prediction.label);
    form.append("scores", JSON.stringify(item.prediction.top_k.map(({ label, score }) => ({ label, score }))));
  }
  if (p.note.value.trim()) form.append("note", p.note.value.trim());
  if (item.requestId) form.append("request_id", item.requestId);
  try {
    const stored = await (await api(itemPath(item, "feedback"), { method: "POST", body: form })).json();
    p.form.hidden = true;
    p.error.textContent = "";
    const said = p.list.value === NONE_OF_THESE ? "none of these" : `"${p.list.value}"`;
    p.confirmation.textContent = `Thank you: saved as flag #${stored.id} (${said}).`;
  } catch (error) {
    p.error.textContent = error.message;
  }
}

page.model.addEventListener("change", loadVersions);
page.version.addEventListener("change", describeVersion);
page.files.addEventListener("change", () => {
  addFiles(page.files.files);
  page.files.value = "";
});
page.drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  page.drop.classList.add("over");
});
page.drop.addEventListener("dragleave", () => page.drop.classList.remove("over"));
page.drop.addEventListener("drop", (event) => {
  event.preventDefault();
  page.drop.classList.remove("over");
  addFiles(event.dataTransfer.files);
});
document.addEventListener("paste", (event) => addFiles(event.clipboardData && event.clipboardData.files));
page.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, page.key.value.trim());
  page.key.value = "";
  page.keyPanel.hidden = true;
  loadModels();
});

loadModels();
