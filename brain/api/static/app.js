// brain web teleop: pairing, then the drive screen. Plain JS, no build step.
// Auth: the bearer token from POST /api/v1/pair lives in localStorage and goes in the
// Authorization header of fetch() calls. The <img> MJPEG view, the EventSource telemetry and
// the teleop WebSocket cannot send headers, so they carry a short-lived ?ticket= from
// POST /api/v1/ticket instead (the long-lived token never appears in a URL).
"use strict";
const API = "/api/v1";
const $ = (id) => document.getElementById(id);
const state = { token: localStorage.getItem("brainToken"), ws: null, es: null, mode: "",
  cmd: { steering: 0, throttle: 0 }, keys: new Set(), joy: null, timer: null };

async function api(path, opts = {}) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const r = await fetch(API + path, { ...opts, headers });
  if (r.status === 401) { showPair(); throw new Error("not paired"); }
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : null;
  if (!r.ok) throw new Error((body && (typeof body.detail === "string" ? body.detail
    : JSON.stringify(body.detail))) || r.statusText);
  return body;
}

function showPair() {
  stopLive();
  $("drive-screen").hidden = true; $("pair-screen").hidden = false;
}

$("pair-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("pair-error").textContent = "";
  try {
    const r = await fetch(API + "/pair", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ code: $("pair-code").value.trim(), client_name: $("pair-client").value.trim() }) });
    const body = await r.json();
    if (!r.ok) throw new Error(typeof body.detail === "string" ? body.detail : "invalid code or name");
    state.token = body.token; localStorage.setItem("brainToken", body.token);
    localStorage.setItem("brainFingerprint", body.fingerprint);
    showDrive();
  } catch (e) { $("pair-error").textContent = e.message; }
});

async function showDrive() {
  $("pair-screen").hidden = true; $("drive-screen").hidden = false;
  await startLive();
  refreshTraining();
}

async function startLive() {
  stopLive();
  const { ticket } = await api("/ticket", { method: "POST" });
  const q = "?ticket=" + encodeURIComponent(ticket);
  $("camera").src = API + "/camera.mjpeg" + q;
  state.es = new EventSource(API + "/telemetry" + q);
  state.es.onmessage = (ev) => showTelemetry(JSON.parse(ev.data));
  state.es.onerror = () => setLink(false);
  const proto = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(proto + location.host + API + "/teleop" + q);
  state.ws = ws;
  ws.onopen = () => setLink(true);
  // The robot answers a refused command once (e.g. not in manual mode) with {error, kind}.
  ws.onmessage = (ev) => { const m = JSON.parse(ev.data); if (m.error) $("drive-error").textContent = m.error; };
  ws.onclose = () => { setLink(false); if (state.ws === ws) setTimeout(reconnect, 1000); };
  state.timer = setInterval(sendTeleop, 50); // 20 Hz: well inside the robot's deadman
}

async function reconnect() { if (!$("drive-screen").hidden) { try { await startLive(); } catch (e) {} } }

function stopLive() {
  clearInterval(state.timer);
  clearInterval(training.timer); training.timer = null;
  if (training.es) { training.es.close(); training.es = null; } training.id = null;
  if (state.es) state.es.close();
  const ws = state.ws; state.ws = null; if (ws) ws.close();
  $("camera").removeAttribute("src");
}

function setLink(ok) { const l = $("link"); l.textContent = ok ? "link ok" : "link down";
  l.className = "link " + (ok ? "ok" : "down"); }

// The daemon's mode values (brain.control.modes.Mode) and what the driver reads. The raw value
// stays on #mode as data-value (for CSS and tests); the data-mode buttons are requests.
const MODE_LABELS = { idle: "idle", manual: "manual", autonomous_armed: "armed",
  autonomous_driving: "driving", estop: "e-stop" };
const MODE_OF_REQUEST = { idle: "idle", manual: "manual", arm: "autonomous_armed",
  drive: "autonomous_driving", reset: "estop" }; // reset is the way out of a latched e-stop

function showMode(mode) {
  state.mode = mode;
  const m = $("mode"); m.textContent = MODE_LABELS[mode] ?? mode; m.dataset.value = mode;
  m.title = mode;
  document.querySelectorAll("button[data-mode]").forEach((b) =>
    b.classList.toggle("active", MODE_OF_REQUEST[b.dataset.mode] === mode));
}

function showTelemetry(t) {
  showMode(t.mode);
  $("rate").dataset.ticks = t.ticks ?? 0;
  $("rate").textContent = (t.rate_hz ?? 0).toFixed(1) + " Hz";
  $("lateness").textContent = "p99 " + (t.lateness_ms?.p99 ?? 0).toFixed(2) + " ms";
  const a = t.action ?? {};
  $("action").textContent = "s " + (a.steering ?? 0).toFixed(2) + " t " + (a.throttle ?? 0).toFixed(2);
  const rec = t.recorder?.recording; const b = $("record");
  b.classList.toggle("on", !!rec); b.textContent = rec ? "■ Stop recording" : "● Record";
  if (t.ota) showOta(t.ota);
}

// OTA: the active bundle and the slot phase come with every telemetry event.
function showOta(o) {
  $("ota-active").textContent = o.active ?? "–";
  const p = $("ota-phase"); p.textContent = o.phase; p.dataset.value = o.phase;
  $("ota-note").textContent = o.candidate ? "trying " + o.candidate
    : (o.last_error ? o.last_error.reason + ": " + (o.last_error.bundle_id ?? "") : "");
}
$("ota-rollback").addEventListener("click", async () => {
  $("drive-error").textContent = "";
  try { const r = await api("/ota/rollback", { method: "POST", body: "{}" });
    showOta({ phase: r.phase, active: r.active?.bundle_id, candidate: r.candidate?.bundle_id,
      last_error: r.last_error }); }
  catch (e) { $("drive-error").textContent = e.message; }
});

// --- training: the newest job, followed live over SSE; a uPlot chart of its loss -----------
// GET /training gives the newest job (and whether local promotion is on); its
// /training/{id}/events stream sends status, metric, checkpoint, log and finally result.
const training = { id: null, es: null, chart: null, steps: [], loss: [], val: [],
  promotion: false, timer: null };

function trainingChart() {
  const box = $("train-chart");
  if (training.chart) { training.chart.destroy(); training.chart = null; }
  box.replaceChildren();
  if (typeof uPlot === "undefined") return; // the vendored chart failed to load: text only
  const width = Math.max(240, Math.min(860, box.clientWidth || 600));
  training.chart = new uPlot({ width, height: 180, scales: { x: { time: false } },
    axes: [{ stroke: "#aaa", grid: { stroke: "#333" }, label: "step" },
           { stroke: "#aaa", grid: { stroke: "#333" }, size: 60 }],
    series: [{ label: "step" }, { label: "loss", stroke: "#5af", width: 2 },
             { label: "val loss", stroke: "#fa5", width: 2, points: { show: true } }] },
    [[], [], []], box);
}

function followJob(id) {
  if (training.es) training.es.close();
  training.id = id; training.steps = []; training.loss = []; training.val = [];
  $("train-job").textContent = id; $("train-verdict").hidden = true;
  $("train-promote").hidden = true; trainingChart();
  api("/ticket", { method: "POST" }).then(({ ticket }) => {
    if (training.id !== id) return;
    const es = new EventSource(API + "/training/" + encodeURIComponent(id) + "/events?ticket="
      + encodeURIComponent(ticket));
    training.es = es;
    es.addEventListener("status", (ev) => showTrainStatus(JSON.parse(ev.data)));
    es.addEventListener("metric", (ev) => addMetric(JSON.parse(ev.data)));
    es.addEventListener("log", (ev) => { $("train-note").textContent = JSON.parse(ev.data).message; });
    es.addEventListener("result", (ev) => { showResult(JSON.parse(ev.data)); es.close(); });
    es.onerror = () => { if (es.readyState === EventSource.CLOSED && training.es === es) training.es = null; };
  }).catch((e) => { $("train-note").textContent = e.message; });
}

function showTrainStatus(s) {
  const st = $("train-status"); st.textContent = s.status; st.dataset.value = s.status;
  $("train-progress").textContent = s.max_steps ? `step ${s.step}/${s.max_steps}` : "";
  if (s.reason) $("train-note").textContent = s.reason;
  const active = ["submitted", "queued", "waiting", "running", "paused"].includes(s.status);
  $("train-stop").hidden = !active; $("train-start").hidden = active;
}

function addMetric(m) {
  training.steps.push(m.step); training.loss.push(m.loss); training.val.push(m.val_loss);
  $("train-chart").dataset.points = training.steps.length;
  $("train-chart").dataset.lastLoss = m.loss;
  if (training.chart) training.chart.setData([training.steps, training.loss, training.val]);
}

function showResult(job) {
  showTrainStatus(job);
  const g = job.gate, v = $("train-verdict");
  if (!g) { v.hidden = true; return; }
  const lines = [(g.passed ? "gate passed" : "gate refused") + ": " + g.candidate];
  for (const kind of ["target", "kept"]) for (const [place, r] of Object.entries(g[kind] ?? {}))
    lines.push(`${kind} ${place}: ${r.active.toFixed(4)} → ${r.candidate.toFixed(4)} m${r.ok ? "" : " FAIL"}`);
  for (const reason of g.reasons) lines.push(reason);
  v.textContent = lines.join("\n"); v.className = "verdict " + (g.passed ? "passed" : "refused");
  v.hidden = false; v.dataset.passed = g.passed;
  $("train-promote").hidden = !(g.passed && job.bundle && training.promotion);
}

async function refreshTraining() {
  try {
    const r = await api("/training?limit=1");
    training.promotion = r.promotion;
    const job = r.jobs[0];
    if (!r.worker) $("train-note").textContent = r.note;
    if (job && job.id !== training.id) followJob(job.id);
  } catch (e) { /* not paired or no API: the drive screen says so */ }
  if (!training.timer) training.timer = setInterval(refreshTraining, 5000);
}

$("train-start").addEventListener("click", async () => {
  $("drive-error").textContent = "";
  try { const r = await api("/training", { method: "POST", body: "{}" });
    showTrainStatus({ status: "submitted" }); if (r.note) $("train-note").textContent = r.note;
    followJob(r.job); }
  catch (e) { $("drive-error").textContent = e.message; }
});
$("train-stop").addEventListener("click", async () => {
  try { await api("/training/" + encodeURIComponent(training.id) + "/stop", { method: "POST", body: "{}" }); }
  catch (e) { $("drive-error").textContent = e.message; }
});
$("train-promote").addEventListener("click", async () => {
  $("drive-error").textContent = "";
  try { const r = await api("/training/" + encodeURIComponent(training.id) + "/promote",
      { method: "POST", body: "{}" });
    $("train-promote").hidden = true;
    $("train-note").textContent = "promoting: " + (r.candidate?.bundle_id ?? "") + " " + r.phase; }
  catch (e) { $("drive-error").textContent = e.message; }
});

// --- inputs: joystick, keyboard, gamepad; the strongest source wins -----------------------
function clamp(v) { return Math.max(-1, Math.min(1, v)); }
function currentCommand() {
  if (state.joy) return state.joy;
  const pads = navigator.getGamepads ? [...navigator.getGamepads()].filter(Boolean) : [];
  for (const p of pads) {
    const s = p.axes[0] || 0, th = -(p.axes[3] || 0) || ((p.buttons[7]?.value || 0) - (p.buttons[6]?.value || 0));
    if (Math.abs(s) > 0.08 || Math.abs(th) > 0.08) return { steering: clamp(s), throttle: clamp(th) };
  }
  const k = state.keys;
  const steer = (k.has("ArrowRight") || k.has("d") ? 1 : 0) - (k.has("ArrowLeft") || k.has("a") ? 1 : 0);
  const thr = (k.has("ArrowUp") || k.has("w") ? 0.5 : 0) - (k.has("ArrowDown") || k.has("s") ? 0.5 : 0);
  return { steering: steer, throttle: thr };
}

function sendTeleop() {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN || state.mode !== "manual") return;
  ws.send(JSON.stringify(currentCommand()));
}

document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT") return;
  if (e.key === " ") { e.preventDefault(); estop(); return; }
  state.keys.add(e.key.length === 1 ? e.key.toLowerCase() : e.key);
});
document.addEventListener("keyup", (e) => state.keys.delete(e.key.length === 1 ? e.key.toLowerCase() : e.key));
window.addEventListener("blur", () => state.keys.clear());

const joy = $("joystick");
function joyMove(e) {
  const r = joy.getBoundingClientRect();
  const x = clamp(((e.clientX - r.left) / r.width) * 2 - 1), y = clamp(((e.clientY - r.top) / r.height) * 2 - 1);
  state.joy = { steering: x, throttle: -y };
  $("knob").style.left = (35 + x * 35) + "%"; $("knob").style.top = (35 + y * 35) + "%";
}
function joyEnd() { state.joy = null; $("knob").style.left = "35%"; $("knob").style.top = "35%"; }
joy.addEventListener("pointerdown", (e) => { joy.setPointerCapture(e.pointerId); joyMove(e); });
joy.addEventListener("pointermove", (e) => { if (state.joy) joyMove(e); });
joy.addEventListener("pointerup", joyEnd); joy.addEventListener("pointercancel", joyEnd);

// --- buttons --------------------------------------------------------------------------------
async function setMode(mode) {
  $("drive-error").textContent = "";
  try { const r = await api("/mode", { method: "POST", body: JSON.stringify({ mode }) }); showMode(r.mode); }
  catch (e) { $("drive-error").textContent = e.message; }
}
async function estop() { state.joy = null; state.keys.clear(); await setMode("estop"); }
$("estop").addEventListener("click", estop);
document.querySelectorAll("button[data-mode]").forEach((b) => b.addEventListener("click", () => setMode(b.dataset.mode)));
$("record").addEventListener("click", async () => {
  $("drive-error").textContent = "";
  const on = $("record").classList.contains("on");
  try { await api(on ? "/episodes/stop" : "/episodes/start", { method: "POST", body: on ? null : "{}" }); }
  catch (e) { $("drive-error").textContent = e.message; }
});
$("show-episodes").addEventListener("click", async () => {
  const box = $("episodes"); box.hidden = !box.hidden; if (box.hidden) return;
  const { episodes } = await api("/episodes");
  const ul = $("episode-list"); ul.replaceChildren();
  for (const ep of episodes) { const li = document.createElement("li");
    li.textContent = `${ep.id} · ${ep.steps} steps`; ul.append(li); }
  if (!episodes.length) ul.textContent = "no episodes yet";
});
$("show-diagnostics").addEventListener("click", async () => {
  const pre = $("diagnostics"); pre.hidden = !pre.hidden;
  if (!pre.hidden) pre.textContent = JSON.stringify(await api("/diagnostics"), null, 2);
});
$("unpair").addEventListener("click", () => { localStorage.removeItem("brainToken"); state.token = null; showPair(); });

(async function init() {
  try { const h = await (await fetch(API + "/health")).json(); $("robot-name").textContent = h.name;
    document.title = h.name + " · brain"; } catch (e) {}
  if (!state.token) { showPair(); return; }
  try { await api("/status"); await showDrive(); } catch (e) { showPair(); }
})();
