// The workbench playground: pairs -> directions (with progress) -> per-layer chart -> steered comparisons ->
// save the chosen cell as a spec and download it. Plain JS over the server's /api and /v1 endpoints; every
// text from the server is inserted as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, directions: null, layers: [], compareSeq: 0, progressLog: [] };
window.playground = state; // read by the browser test

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function showError(message) {
  const s = $("status");
  s.textContent = message || "";
  s.className = message ? "error" : "";
}

async function api(path, options) {
  const opts = Object.assign({ credentials: "same-origin" }, options || {});
  if (opts.json !== undefined) {
    opts.method = opts.method || "POST";
    opts.headers = Object.assign({ "Content-Type": "application/json" }, opts.headers || {});
    opts.body = JSON.stringify(opts.json);
    delete opts.json;
  }
  const response = await fetch(path, opts);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

// ---- info and the spec list ------------------------------------------------------------------------------------

async function loadInfo() {
  const info = await api("/api/info");
  state.info = info;
  $("model-line").textContent =
    `${info.model} (${info.backend} backend): ${info.n_layers} layers, d_model ${info.d_model}, context ${info.n_ctx} ` +
    `tokens; specs saved to ${info.spec_dir}`;
  const sel = $("pairs-set");
  sel.replaceChildren();
  for (const s of info.pairs_sets) sel.append(el("option", { value: s.name }, s.label));
  if (!info.pairs_sets.length) {
    sel.append(el("option", { value: "" }, "none (not a toy model): upload pairs"));
    sel.disabled = true;
  }
  $("prompts").value = info.prompts.join("\n");
  $("pairs-hint").textContent += ` Upload limit: ${info.max_upload_bytes} bytes.`;
}

async function refreshLoaded() {
  const list = await api("/v1/steering");
  const ul = $("loaded");
  ul.replaceChildren();
  for (const s of list.data) {
    const what = s.interventions.map((iv) => `${iv.kind} ${iv.hook}${iv.scale !== undefined ? " x" + iv.scale : ""}`);
    const unload = el("button", { class: "small", type: "button" }, "unload");
    unload.addEventListener("click", async () => {
      try { await api(`/v1/steering/${encodeURIComponent(s.id)}`, { method: "DELETE" }); await refreshLoaded(); }
      catch (e) { showError(e.message); }
    });
    ul.append(el("li", { "data-spec": s.id }, el("code", {}, s.id), ` ${what.join(", ")} `, unload));
  }
  for (const name of list.available) {
    const load = el("button", { class: "small", type: "button" }, "load");
    load.addEventListener("click", async () => {
      try { await api("/v1/steering", { json: { name } }); await refreshLoaded(); }
      catch (e) { showError(e.message); }
    });
    ul.append(el("li", {}, el("code", {}, name), " (on disk, not loaded) ", load));
  }
  if (!ul.children.length) ul.append(el("li", {}, "none"));
}

// ---- directions ------------------------------------------------------------------------------------------------

function setProgress(task) {
  $("progress").value = task.progress;
  $("stage").textContent = task.state === "error" ? "failed" : task.stage;
  state.progressLog.push({ state: task.state, progress: task.progress, stage: task.stage });
}

async function compute() {
  showError("");
  $("compute").disabled = true;
  try {
    const body = { method: $("method").value, position: $("position").value };
    const file = $("pairs-file").files[0];
    if (file) {
      if (file.size > state.info.max_upload_bytes) {
        throw new Error(`${file.name} is ${file.size} bytes; the server takes pairs files up to ${state.info.max_upload_bytes} bytes.`);
      }
      const up = await api(`/api/pairs?name=${encodeURIComponent(file.name)}`, {
        method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file,
      });
      body.pairs = up.pairs;
    } else {
      body.pairs_set = $("pairs-set").value;
      const set = state.info.pairs_sets.find((s) => s.name === body.pairs_set);
      if (set) $("prompts").value = set.prompts.join("\n");
    }
    let task = await api("/api/directions", { json: body });
    setProgress(task);
    for (let i = 0; i < 3000 && task.state !== "done" && task.state !== "error"; i++) {
      await new Promise((r) => setTimeout(r, 100));
      task = await api(`/api/jobs/${task.id}`);
      setProgress(task);
    }
    if (task.state === "error") throw new Error(task.error.message);
    if (task.state !== "done") throw new Error("computing directions took longer than 5 minutes; try fewer pairs.");
    state.directions = task.result.directions;
    state.layers = task.result.layers;
    drawChart(task.result);
    chooseLayer(bestLayer(task.result.layers));
    $("strength").disabled = false;
    $("save").disabled = false;
    await runCompare();
  } catch (e) {
    showError(e.message);
  } finally {
    $("compute").disabled = false;
  }
}

function bestLayer(layers) {
  const score = (l) => (l.auroc ?? 0) + (l.probe_accuracy ?? 0) + 1e-3 * (l.effect_size ?? 0);
  return layers.reduce((a, b) => (score(b) > score(a) ? b : a)).layer;
}

function drawChart(result) {
  const x = result.layers.map((l) => l.layer);
  const traces = [
    { x, y: result.layers.map((l) => l.probe_accuracy), name: "probe accuracy", mode: "lines+markers" },
    { x, y: result.layers.map((l) => l.auroc), name: "AUROC", mode: "lines+markers" },
    { x, y: result.layers.map((l) => l.effect_size), name: "effect size (right axis)", mode: "lines+markers",
      yaxis: "y2", line: { dash: "dot" } },
  ];
  const layout = {
    margin: { l: 50, r: 50, t: 30, b: 40 }, height: 300,
    title: { text: `${result.method} directions, ${result.n_pairs} pairs (${result.source}), held-out quality`, font: { size: 13 } },
    xaxis: { title: { text: "layer (block output)" }, dtick: 1 },
    yaxis: { title: { text: "accuracy / AUROC" }, range: [0, 1.05] },
    yaxis2: { title: { text: "effect size" }, overlaying: "y", side: "right", rangemode: "tozero" },
    legend: { orientation: "h", y: -0.25 },
  };
  const chart = $("chart");
  chart.replaceChildren();
  Plotly.newPlot(chart, traces, layout, { displaylogo: false, responsive: true });
  chart.on("plotly_click", (ev) => { if (ev.points.length) { chooseLayer(ev.points[0].x); runCompare(); } });
}

function chooseLayer(layer) {
  const sel = $("layer");
  sel.replaceChildren();
  for (const l of state.layers) {
    const q = l.auroc === null ? "" : ` (AUROC ${l.auroc.toFixed(2)})`;
    sel.append(el("option", { value: String(l.layer) }, `${l.layer}${q}`));
  }
  sel.value = String(layer);
  sel.disabled = false;
  const chart = $("chart");
  if (chart.data) {
    Plotly.relayout(chart, { shapes: [{ type: "line", xref: "x", yref: "paper", x0: layer, x1: layer, y0: 0, y1: 1,
      line: { color: "#999", width: 1, dash: "dash" } }] });
  }
}

// ---- comparisons -----------------------------------------------------------------------------------------------

function strengthValue() { return Number($("strength").value); }

function compareBody() {
  const s = strengthValue();
  const prompts = $("prompts").value.split("\n").map((p) => p.trim()).filter((p) => p).slice(0, 4);
  if (!prompts.length) throw new Error("write at least one prompt to continue.");
  return {
    directions: state.directions,
    layer: Number($("layer").value),
    strengths: [s / 2, s, 2 * s],
    positions: $("positions").value,
    prompts,
    max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value),
    seed: Number($("seed").value),
  };
}

async function runCompare() {
  if (!state.directions) return;
  const seq = ++state.compareSeq;
  const box = $("compare");
  box.dataset.ready = "0";
  try {
    const body = compareBody();
    const result = await api("/api/compare", { json: body });
    if (seq !== state.compareSeq) return; // a newer request is on its way
    renderCompare(result, body);
    showError("");
  } catch (e) {
    if (seq === state.compareSeq) showError(e.message);
  }
}

function fmt(x, digits) { return x === null || x === undefined ? "n/a" : Number(x).toFixed(digits); }

function renderCompare(result, body) {
  const box = $("compare");
  const labels = ["unsteered", "x 1/2", "chosen", "x 2"];
  const head = el("tr", {}, el("th", {}, "prompt"));
  result.columns.forEach((c, i) => head.append(el("th", { class: i === 2 ? "chosen" : "" }, `${labels[i]}: strength ${fmt(c.strength, 2)}`)));
  const rows = body.prompts.map((p, r) => {
    const tr = el("tr", {}, el("td", { class: "prompt" }, p));
    result.columns.forEach((c, i) => {
      const row = c.rows[r];
      tr.append(el("td", { class: i === 2 ? "chosen" : "", "data-column": String(i) },
        el("div", { class: "continuation" }, row.text),
        el("div", { class: "hint" }, `ppl ${fmt(row.perplexity, 2)}, KL ${fmt(row.kl, 3)}`)));
    });
    return tr;
  });
  const foot = el("tr", {}, el("td", {}, "mean fluency cost"));
  result.columns.forEach((c, i) => foot.append(el("td", { class: i === 2 ? "chosen" : "" },
    `perplexity ${fmt(c.perplexity, 2)}; KL to unsteered ${fmt(c.kl, 3)} nats/token`)));
  const table = el("table", { class: "compare" }, el("thead", {}, head), el("tbody", {}, ...rows), el("tfoot", {}, foot));
  const caption = el("p", { class: "hint" },
    `layer ${result.layer}, positions ${result.positions.kind}; perplexity of each continuation under the unsteered ` +
    `model, KL(steered || unsteered) of the next-token distributions along it.`);
  box.replaceChildren(caption, table);
  box.dataset.strength = String(body.strengths[1]);
  box.dataset.ready = "1";
}

let compareTimer = null;
function scheduleCompare() {
  clearTimeout(compareTimer);
  compareTimer = setTimeout(runCompare, 250);
}

// ---- saving ----------------------------------------------------------------------------------------------------

async function save() {
  showError("");
  try {
    const name = $("spec-name").value.trim();
    const saved = await api("/api/specs", { json: {
      directions: state.directions, layer: Number($("layer").value), strength: strengthValue(),
      positions: $("positions").value, name, overwrite: $("overwrite").checked,
    } });
    $("saved").textContent = `saved ${saved.spec.id}: ${saved.spec.interventions[0].hook} x${saved.spec.interventions[0].scale}`;
    const links = $("downloads");
    links.replaceChildren("download: ");
    const names = { spec: "spec (.zip)", gguf: "llama.cpp control vector (.gguf)", "hf-baked": "baked checkpoint (.zip)" };
    for (const [fmtName, href] of Object.entries(saved.downloads)) {
      links.append(el("a", { href, id: `download-${fmtName}` }, names[fmtName] || fmtName), " ");
    }
    await refreshLoaded();
  } catch (e) {
    showError(e.message);
  }
}

// ---- wiring ----------------------------------------------------------------------------------------------------

function init() {
  $("compute").addEventListener("click", compute);
  $("save").addEventListener("click", save);
  $("strength").addEventListener("input", () => { $("strength-value").textContent = strengthValue().toFixed(2); });
  $("strength").addEventListener("change", scheduleCompare);
  for (const id of ["layer", "positions", "temperature", "max-tokens", "seed", "prompts"]) {
    $(id).addEventListener("change", scheduleCompare);
  }
  loadInfo().then(refreshLoaded).catch((e) => showError(e.message));
}

document.addEventListener("DOMContentLoaded", init);
