// brain-cloud serve's page: runs, fleet, and the full-cycle button with its live log.
// The admin token comes in the URL fragment (#token=…), printed by `brain-cloud serve`.
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
const $ = (sel) => document.querySelector(sel);

function api(path, opts = {}) {
  return fetch(path, { ...opts, headers: { Authorization: `Bearer ${token}` } })
    .then(async (r) => {
      const body = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(body.detail || `HTTP ${r.status}`);
      return body;
    });
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}

function row(cells) {
  const tr = document.createElement("tr");
  cells.forEach((c) => tr.appendChild(c));
  return tr;
}

function showRuns(runs) {
  const body = $("#runs tbody");
  body.replaceChildren(...runs.map((r) => {
    const tr = row([cell(r.run_id), cell(r.status, r.status), cell(r.provider),
                    cell(r.connection_mode), cell(r.failed_stage), cell(r.terminated),
                    cell(r.bundle ? r.bundle.id : "")]);
    tr.dataset.run = r.run_id;
    tr.dataset.status = r.status;
    return tr;
  }));
}

function showChannels(channels) {
  const box = $("#channels");
  box.replaceChildren(...channels.map((c) => {
    const div = document.createElement("div");
    div.className = "channel";
    div.dataset.channel = c.channel;
    div.dataset.state = c.state;
    const h = document.createElement("h3");
    h.textContent = `${c.channel}: ${c.bundle ? c.bundle.id : "no bundle"} — ` +
      `${c.state}, ${c.percent}% (stages ${c.stages.join(" → ")})`;
    const t = document.createElement("table");
    t.innerHTML = "<thead><tr><th>robot</th><th>bucket</th><th>in stage</th><th>active</th>" +
      "<th>phase</th><th>result</th><th>reason</th></tr></thead>";
    const tb = document.createElement("tbody");
    c.robots.forEach((r) => tb.appendChild(row([
      cell(r.id), cell(r.bucket), cell(r.in_stage ? "yes" : ""), cell(r.active),
      cell(r.phase), cell(r.result, r.result), cell(r.reason)])));
    t.appendChild(tb);
    div.append(h, t);
    return div;
  }));
}

let following = null;

function follow(runId) {
  if (following === runId) return;
  following = runId;
  const log = $("#cycle-log");
  log.textContent = "";
  $("#cycle-state").dataset.value = "running";
  $("#cycle-state").textContent = `run ${runId}: running`;
  const es = new EventSource(`/api/runs/${runId}/log?token=${encodeURIComponent(token)}`);
  es.addEventListener("line", (e) => {
    log.textContent += e.data + "\n";
    log.dataset.lines = String(log.textContent.split("\n").length - 1);
    log.scrollTop = log.scrollHeight;
  });
  es.addEventListener("end", (e) => {
    const end = JSON.parse(e.data);
    $("#cycle-state").dataset.value = end.status;
    $("#cycle-state").textContent = `run ${runId}: ${end.status}` +
      (end.error ? ` (${end.error})` : "");
    es.close();
    refresh();
  });
}

async function refresh() {
  try {
    const st = await api("/api/status");
    $("#conn").dataset.value = "ok";
    $("#conn").textContent = "connected";
    showRuns(st.runs);
    showChannels(st.channels);
    $("#run-cycle").disabled = !st.cycle.configured || st.cycle.running;
    if (st.cycle.running && st.cycle.run_id) follow(st.cycle.run_id);
  } catch (e) {
    $("#conn").dataset.value = "error";
    $("#conn").textContent = `not connected: ${e.message}`;
  }
}

$("#run-cycle").addEventListener("click", async () => {
  $("#run-cycle").disabled = true;
  try {
    const r = await api("/api/full-cycle", { method: "POST" });
    follow(r.run_id);
  } catch (e) {
    $("#cycle-state").textContent = `could not start: ${e.message}`;
  }
});

refresh();
setInterval(refresh, 2000);
