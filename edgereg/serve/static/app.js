// The page of `edgereg serve`: live image, reading, chart and card, from the server's own endpoints.
// No framework and nothing from the internet. A reading is rendered from whatever fields it carries:
// targets from the card (or the reading), flags, intervals (<target>_lo/_hi, lo/hi maps), and any
// other field in a generic list, so readings can grow without the page changing.
"use strict";

const KNOWN_FIELDS = new Set(["timestamp", "frame", "value", "spread", "smoothed", "stable", "quality", "note",
  "quality_detail", "flags", "lo", "hi", "interval"]);
const MAX_CHARTS = 8;
const MAX_WINDOW_S = 900;

const state = {
  card: null, info: null, targets: [], units: {}, received: 0, points: [], windowS: 300,
  lastAt: 0, wasDown: false, events: null, drawPending: false,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// Four significant digits without an exponent, as the server's overlay writes them.
function formatValue(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "n/a";
  const magnitude = v === 0 ? 0 : Math.floor(Math.log10(Math.abs(v)));
  return v.toFixed(Math.min(6, Math.max(0, 3 - magnitude)));
}

// A number as short as it can be written exactly to 6 significant digits (ranges: 80, 350, 0.5).
function formatCompact(v) {
  return Number.isFinite(v) ? String(Number(v.toPrecision(6))) : String(v);
}

function formatShort(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : formatValue(v);
  if (v === null || v === undefined) return "–";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) {
    let reason = response.statusText;
    try { reason = (await response.json()).error || reason; } catch (e) { /* not JSON */ }
    throw new Error(`${url}: ${response.status} ${reason}`);
  }
  return response.json();
}

function setConnection(kind, text) {
  const pill = $("connection");
  pill.className = `pill pill-${kind}`;
  pill.textContent = text;
}

// ---------------------------------------------------------------- the card

function renderCard() {
  const card = state.card, info = state.info, list = $("card");
  list.replaceChildren();
  const add = (key, value) => list.append(el("dt", { text: key }), el("dd", { text: value }));
  add("file", info.model);
  add("kind", card.kind);
  const ranges = card.range || [];
  add("targets", card.targets.map((t, i) => {
    const unit = state.units[t] ? ` ${state.units[t]}` : "";
    const range = ranges[i] ? ` (${formatCompact(ranges[i][0])}..${formatCompact(ranges[i][1])}${unit})` : unit;
    return t + range;
  }).join(", "));
  add("input", `${card.input_size[0]}×${card.input_size[1]} ${card.channels}, crop ${card.crop}` +
      (card.roi ? ` roi (${card.roi.join(", ")})` : ""));
  add("tta", info.tta);
  add("providers", info.providers.join(", "));
  for (const [key, value] of Object.entries(card.quantization || {})) {
    if (typeof value !== "object") add(`quantization.${key}`, formatShort(value));
  }
  let shown = 0;
  for (const [key, value] of Object.entries(card.provenance || {})) {
    if (shown >= 14) break;
    if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      for (const [sub, inner] of Object.entries(value)) {
        if (typeof inner !== "object" && shown < 14) { add(`${key}.${sub}`, formatShort(inner)); shown++; }
      }
    } else if (!Array.isArray(value)) { add(key, formatShort(value)); shown++; }
  }
  $("model").textContent = `${info.model} · ${card.kind} · edgereg ${info.version}`;
}

// ---------------------------------------------------------------- one reading

function targetsOf(reading) {
  if (state.targets.length) return state.targets;
  return Object.keys(reading.value || reading.smoothed || {}).filter((k) => !/_(lo|hi|spread)$/.test(k));
}

function intervalOf(reading, target) {
  const pick = (lo, hi) => (Number.isFinite(lo) && Number.isFinite(hi) ? [lo, hi] : null);
  const interval = reading.interval && reading.interval[target];
  if (Array.isArray(interval)) return pick(interval[0], interval[1]);
  if (interval && typeof interval === "object") return pick(interval.lo, interval.hi);
  if (reading.lo && reading.hi) return pick(reading.lo[target], reading.hi[target]);
  const value = reading.value || {};
  return pick(value[`${target}_lo`], value[`${target}_hi`]) || pick(reading[`${target}_lo`], reading[`${target}_hi`]);
}

function flagsOf(reading) {
  const flags = reading.flags;
  if (Array.isArray(flags)) return flags.map(String);
  if (flags && typeof flags === "object") {
    return Object.entries(flags).filter(([, on]) => on).map(([name, on]) =>
      (on === true ? name : `${name}: ${Array.isArray(on) ? on.join(", ") : on}`));
  }
  return [];
}

function isTargetField(key) {
  return state.targets.some((t) => key === `${t}_lo` || key === `${t}_hi`);
}

function renderValues(reading) {
  const box = $("values");
  const targets = targetsOf(reading);
  if (box.childElementCount !== targets.length) {
    box.replaceChildren(...targets.map((t) => el("div", { class: "target", "data-target": t },
      el("div", { class: "name", text: t }),
      el("div", { class: "big" }, el("span", { class: "number", text: "–" }),
        el("span", { class: "unit", text: state.units[t] || "" })),
      el("div", { class: "sub muted" }))));
  }
  for (const node of box.children) {
    const t = node.dataset.target;
    const shown = (reading.smoothed || {})[t] ?? (reading.value || {})[t];
    node.querySelector(".number").textContent = formatValue(shown);
    const parts = [];
    const raw = (reading.value || {})[t];
    if (raw !== undefined && reading.smoothed) parts.push(`this frame ${formatValue(raw)}`);
    const spread = (reading.spread || {})[t];
    if (spread !== undefined && spread !== null) parts.push(`± ${formatValue(spread)} (TTA spread)`);
    const interval = intervalOf(reading, t);
    if (interval) parts.push(`interval ${formatValue(interval[0])} – ${formatValue(interval[1])}`);
    node.querySelector(".sub").textContent = parts.join(" · ");
  }
  box.dataset.frame = reading.frame;
  box.classList.toggle("many", targets.length > 2);  // distributions, vectors: smaller numbers
  box.classList.remove("stale");
}

function renderExtra(reading) {
  const list = $("extra");
  list.replaceChildren();
  for (const [key, value] of Object.entries(reading)) {
    if (KNOWN_FIELDS.has(key) || isTargetField(key)) continue;
    list.append(el("dt", { text: key }), el("dd", { text: formatShort(value) }));
  }
}

function onReading(reading) {
  state.received += 1;
  state.lastAt = Date.now();
  $("received").textContent = state.received;
  $("reading").dataset.frame = reading.frame ?? "";
  $("reading").dataset.quality = reading.quality;
  const banner = $("banner"), stateBox = $("state");
  if (reading.quality === "no_frame") {
    banner.hidden = false;
    banner.textContent = "camera lost, retrying";
    stateBox.className = "state state-lost";
    stateBox.textContent = "camera lost, retrying";
    $("values").classList.add("stale");
  } else {
    banner.hidden = true;
    $("frame").textContent = reading.frame;
    if (reading.quality === "ok") {
      renderValues(reading);
      stateBox.className = `state ${reading.stable ? "state-stable" : "state-settling"}`;
      stateBox.textContent = reading.stable ? "STABLE" : "settling";
    } else {
      stateBox.className = "state state-withheld";
      stateBox.textContent = `withheld: ${reading.quality}`;
      $("values").classList.add("stale");
    }
  }
  $("note").textContent = reading.note || "";
  const detail = reading.quality_detail;
  $("detail").textContent = detail ? ["brightness", "clipped", "sharpness", "change"]
    .filter((k) => detail[k] !== null && detail[k] !== undefined)
    .map((k) => `${k} ${formatShort(detail[k])}`).join(" · ") : "";
  const flags = $("flags");
  flags.replaceChildren(...flagsOf(reading).map((f) => el("span", { class: "flag", text: f })));
  renderExtra(reading);
  addPoint(reading);
}

// ---------------------------------------------------------------- the chart

function addPoint(reading) {
  const values = {};
  for (const t of targetsOf(reading)) {
    const v = reading.quality === "ok" ? ((reading.smoothed || {})[t] ?? (reading.value || {})[t]) : null;
    values[t] = Number.isFinite(v) ? v : null;
  }
  state.points.push({ t: reading.timestamp, values, stable: !!reading.stable });
  const oldest = reading.timestamp - MAX_WINDOW_S;
  while (state.points.length && state.points[0].t < oldest) state.points.shift();
  scheduleDraw();
}

function scheduleDraw() {
  if (state.drawPending) return;
  state.drawPending = true;
  setTimeout(() => { state.drawPending = false; requestAnimationFrame(drawCharts); }, 250);
}

function drawCharts() {
  const box = $("charts");
  const targets = state.targets.length ? state.targets : Object.keys((state.points.at(-1) || {}).values || {});
  const shownTargets = targets.slice(0, MAX_CHARTS);
  if (box.childElementCount !== shownTargets.length) {
    box.replaceChildren(...shownTargets.map((t) => el("div", { class: "chart" },
      el("div", { class: "chart-title", text: `${t}${state.units[t] ? ` (${state.units[t]})` : ""}` }),
      el("canvas", { "data-target": t }))));
  }
  const now = state.points.length ? state.points.at(-1).t : Date.now() / 1000;
  // the window, or less while the data is younger than the window (the chart fills as it comes)
  const start = Math.min(now - 10, Math.max(now - state.windowS, state.points.length ? state.points[0].t : now));
  const points = state.points.filter((p) => p.t >= start);
  for (const canvas of box.querySelectorAll("canvas")) drawChart(canvas, canvas.dataset.target, points, start, now);
}

function drawChart(canvas, target, points, start, end) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (!width || !height) return;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  const left = 56, right = 8, top = 8, bottom = 18;
  const plotW = width - left - right, plotH = height - top - bottom;
  const values = points.map((p) => p.values[target]).filter((v) => v !== null && v !== undefined);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#8b96a8";
  ctx.strokeStyle = "#2a3340";
  ctx.lineWidth = 1;
  ctx.strokeRect(left + 0.5, top + 0.5, plotW, plotH);
  const span = end - start;
  ctx.fillText(span >= 120 ? `-${Math.round(span / 60)} min` : `-${Math.round(span)} s`, left, height - 4);
  ctx.fillText("now", left + plotW - 22, height - 4);
  if (!values.length) { ctx.fillText("no reading yet", left + 8, top + 16); return; }
  let lo = Math.min(...values), hi = Math.max(...values);
  const pad = Math.max((hi - lo) * 0.1, Math.abs(hi) * 1e-3, 1e-9);
  lo -= pad; hi += pad;
  ctx.fillText(formatValue(hi), 4, top + 10);
  ctx.fillText(formatValue(lo), 4, top + plotH);
  const x = (t) => left + ((t - start) / (end - start)) * plotW;
  const y = (v) => top + (1 - (v - lo) / (hi - lo)) * plotH;
  ctx.lineWidth = 2;
  let previous = null;
  for (const p of points) {
    const v = p.values[target];
    if (v === null || v === undefined) {
      ctx.fillStyle = "#55606e";
      ctx.fillRect(x(p.t), top + plotH - 3, 2, 3);
      previous = null;
      continue;
    }
    if (previous) {
      ctx.strokeStyle = p.stable ? "#3ecf6e" : "#f0b429";
      ctx.beginPath();
      ctx.moveTo(x(previous.t), y(previous.v));
      ctx.lineTo(x(p.t), y(v));
      ctx.stroke();
    }
    previous = { t: p.t, v };
  }
}

async function loadHistory() {
  try {
    const h = await getJSON(`/api/history?seconds=${MAX_WINDOW_S}`);
    const points = h.timestamp.map((t, i) => {
      const values = {};
      for (const [name, series] of Object.entries(h.smoothed)) values[name] = series[i];
      return { t, values, stable: h.stable[i] };
    });
    const first = state.points.length ? state.points[0].t : Infinity;
    state.points = points.filter((p) => p.t < first).concat(state.points);
    scheduleDraw();
  } catch (e) { /* the chart fills from the events instead */ }
}

// ---------------------------------------------------------------- live connections

function connectEvents() {
  const events = new EventSource("/events");
  state.events = events;
  events.onopen = () => {
    setConnection("live", "live");
    if (state.wasDown) { reloadStream(); loadHistory(); }
    state.wasDown = false;
  };
  events.onmessage = (message) => {
    let reading;
    try { reading = JSON.parse(message.data); } catch (e) { return; }
    onReading(reading);
  };
  events.onerror = () => {
    state.wasDown = true;
    setConnection("down", "server unreachable, reconnecting…");
    if (events.readyState === EventSource.CLOSED) {  // an HTTP error: the browser gave up, we do not
      setTimeout(connectEvents, 2000);
    }
  };
}

function reloadStream() {
  $("stream").src = `/stream.mjpg?r=${Date.now()}`;
}

function watchdog() {
  if (!state.lastAt) return;
  const age = (Date.now() - state.lastAt) / 1000;
  $("age").textContent = age < 2 ? "live" : `last reading ${age.toFixed(0)} s ago`;
}

// ---------------------------------------------------------------- uploads

async function upload(event) {
  event.preventDefault();
  const files = $("upload-files").files;
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("image", file, file.name);
  const table = $("upload-results");
  table.replaceChildren(el("tr", {}, el("td", { text: "reading…" })));
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form, credentials: "same-origin" });
    const body = await response.json();
    if (!body.readings) throw new Error(body.error || response.statusText);
    table.replaceChildren(...body.readings.map((r) => el("tr", {},
      el("td", { text: r.name }),
      el("td", { text: r.error ? `error: ${r.error}` : Object.entries(r.value).map(([t, v]) =>
        `${t} ${formatValue(v)}${state.units[t] ? ` ${state.units[t]}` : ""}`).join(", ") }),
      el("td", { class: "muted", text: (r.flags || []).join(", ") }))));
  } catch (e) {
    table.replaceChildren(el("tr", {}, el("td", { text: `error: ${e.message}` })));
  }
}

// ---------------------------------------------------------------- start

async function start() {
  if (new URLSearchParams(location.search).has("token")) {
    history.replaceState(null, "", location.pathname);  // the cookie holds it now; keep it out of the URL bar
  }
  try {
    [state.card, state.info] = await Promise.all([getJSON("/api/card"), getJSON("/api/info")]);
  } catch (e) {
    setConnection("down", `cannot reach the server (${e.message}); retrying`);
    setTimeout(start, 2000);
    return;
  }
  state.targets = state.info.targets;
  state.units = state.info.units;
  renderCard();
  $("upload-form").addEventListener("submit", upload);
  if (!state.info.camera) {
    $("api-only").hidden = false;
    setConnection("live", "API only");
    return;
  }
  for (const id of ["live", "reading", "history"]) $(id).hidden = false;
  $("camera").textContent = state.info.camera;
  $("window").addEventListener("change", (e) => { state.windowS = Number(e.target.value); drawCharts(); });
  $("stream").addEventListener("error", () => setTimeout(reloadStream, 1000));
  window.addEventListener("resize", scheduleDraw);
  await loadHistory();
  connectEvents();
  reloadStream();
  setInterval(watchdog, 1000);
}

start();
