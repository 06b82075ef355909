// Kitsune dashboard: polls /api/status and draws it. No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
let last = null;

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
}
const rate = (n) => bytes(n) + "/s";
const count = (n) => Number(n).toLocaleString("en-US");

function duration(seconds) {
  if (seconds < 60) return Math.floor(seconds) + "s";
  const m = Math.floor(seconds / 60), h = Math.floor(m / 60), d = Math.floor(h / 24);
  if (d > 0) return d + "d " + (h % 24) + "h";
  if (h > 0) return h + "h " + (m % 60) + "m";
  return m + "m " + Math.floor(seconds % 60) + "s";
}

function millis(ms) {
  if (!ms) return "–";
  if (ms < 1) return ms.toFixed(2) + " ms";
  if (ms < 1000) return ms.toFixed(ms < 10 ? 1 : 0) + " ms";
  return (ms / 1000).toFixed(2) + " s";
}

function shortID(id) {
  return id && id.length > 20 ? id.slice(0, 10) + "…" + id.slice(-8) : (id || "");
}

function cell(tr, text, cls, title) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  if (title) td.title = title;
  tr.appendChild(td);
  return td;
}

// fillTable replaces a table's rows: one per item, or one saying empty.
function fillTable(id, rows, empty, build) {
  const tbody = $(id).tBodies[0];
  tbody.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(tr, empty, "empty");
    td.colSpan = $(id).tHead.rows[0].cells.length;
    tbody.appendChild(tr);
    return;
  }
  for (const r of rows) {
    const tr = document.createElement("tr");
    build(tr, r, tbody);
    if (!tr.parentNode) tbody.appendChild(tr);
  }
}

function render(s) {
  last = s;
  $("error").hidden = true;
  $("peer-id").textContent = s.peer_id || "–";
  const ready = $("ready");
  ready.textContent = s.ready ? "ready" : "not ready";
  ready.className = "badge " + (s.ready ? "ok" : "bad");
  ready.title = s.not_ready_reason || "";
  const nr = $("not-ready");
  nr.hidden = s.ready;
  nr.textContent = s.ready ? "" : "Not ready: " + (s.not_ready_reason || "unknown reason");
  $("version").textContent = s.version;
  $("uptime").textContent = "up " + duration(s.uptime_seconds);

  const samples = s.throughput.samples;
  const now = samples.length ? samples[samples.length - 1] : null;
  $("rate-out").textContent = now ? rate(now.bytes_out_per_second) : "–";
  const peak = samples.reduce((m, x) => Math.max(m, x.bytes_out_per_second), 0);
  const peakEl = $("peak-throughput");
  peakEl.textContent = rate(peak);
  peakEl.dataset.bytes = String(peak);
  $("window").textContent = Math.round(s.throughput.window_seconds / 60) + " min";

  const r = s.relay;
  $("bytes-out").textContent = bytes(r.bytes_out);
  $("blocks-out").textContent = count(r.blocks_out);
  $("bytes-in").textContent = bytes(r.bytes_in);
  $("blocks-in").textContent = count(r.blocks_in);
  $("wants").textContent = count(r.wants);
  $("queued").textContent = count(r.queued);
  $("failovers").textContent = count(r.failovers);
  $("upstream-peers").textContent = count(s.upstream.peers);
  $("upstream-wanting").textContent = count(s.upstream.wanting);

  fillTable("nodes", s.nodes, "No downstream nodes", (tr, n, tbody) => {
    tr.dataset.peer = n.peer_id || "";
    tr.dataset.state = n.state;
    cell(tr, n.url, "mono");
    const st = cell(tr, "");
    const badge = document.createElement("span");
    badge.className = "state " + n.state;
    // "unknown" and not connected is simply offline.
    badge.textContent = n.connected ? n.state : n.state === "unknown" ? "offline" : n.state + " · offline";
    badge.title = "state " + n.state + (n.connected ? ", connected" : ", not connected");
    st.appendChild(badge);
    const id = cell(tr, "", "mono peer-id");
    const code = document.createElement("code");
    code.textContent = n.peer_id || "–";
    id.appendChild(code);
    cell(tr, count(n.in_flight), "num");
    cell(tr, millis(n.latency_ms), "num");
    cell(tr, millis(n.ping_ms), "num");
    cell(tr, count(n.blocks_served), "num");
    cell(tr, count(n.ejections), "num");
    if (n.last_error) {
      // The error gets a line of its own under the node: errors are long.
      tr.classList.add("has-err");
      const er = document.createElement("tr");
      er.className = "err-row";
      const td = cell(er, "Last error: " + n.last_error, "err");
      td.colSpan = tr.cells.length;
      tbody.appendChild(tr);
      tbody.appendChild(er);
    }
  });

  const byT = Object.entries(s.upstream.by_transport).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const maxT = byT.reduce((m, x) => Math.max(m, x[1]), 1);
  fillTable("transports", byT, "No upstream peers connected", (tr, [t, n]) => {
    tr.dataset.transport = t;
    cell(tr, t, "mono");
    cell(tr, count(n), "num");
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = Math.max(2, Math.round(100 * n / maxT)) + "%";
    cell(tr, "").appendChild(bar);
  });

  $("preload-state").textContent = s.preload.enabled
    ? "(" + s.preload.active + " running)"
    : "(preload port off)";
  fillTable("preload", s.preload.recent, s.preload.enabled ? "No preload calls yet" : "The preload port is off (-p)", (tr, c) => {
    cell(tr, new Date(c.time).toLocaleTimeString());
    cell(tr, shortID(c.root), "mono", c.path || c.root);
    cell(tr, c.node || "–", "mono");
    cell(tr, c.client || "–", "mono");
    const ok = c.outcome === "ok";
    cell(tr, c.outcome + (c.status ? " (" + c.status + ")" : ""), ok ? "outcome-ok" : "outcome-bad");
    cell(tr, millis(c.duration_ms), "num");
  });

  renderGeo(s.geo);
  $("updated").textContent = new Date(s.time).toLocaleTimeString();
  draw();
}

// The world map (world.json: Natural Earth shapes keyed by ISO code,
// made by scripts/worldmap) is fetched once, when the status first has
// a "geo" part.
let world = null, worldLoading = false;
const countryNames = {};

async function loadWorld() {
  worldLoading = true;
  try {
    const resp = await fetch("world.json");
    if (!resp.ok) throw new Error("world.json answered " + resp.status);
    const w = await resp.json();
    const svg = $("world");
    svg.setAttribute("viewBox", w.viewBox);
    const ns = svg.namespaceURI; // SVG's, from the element in the page
    for (const c of w.countries) {
      const p = document.createElementNS(ns, "path");
      p.setAttribute("d", c.d);
      p.dataset.code = c.code;
      const t = document.createElementNS(ns, "title");
      t.textContent = c.name;
      p.appendChild(t);
      svg.appendChild(p);
      countryNames[c.code] = c.name;
    }
    world = w;
    if (last) renderGeo(last.geo);
  } catch (e) {
    const el = $("geo-error");
    el.textContent = "Cannot draw the map: " + e.message;
    el.hidden = false;
  }
}

// shade maps a share in [0, 1] onto the legend's ramp (light orange to
// dark), by a log scale so one busy country does not wash out the rest.
function shade(share) {
  const stops = [[253, 227, 211], [232, 89, 12], [122, 42, 5]];
  const x = Math.min(1, Math.max(0, share)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
  return "rgb(" + c.join(",") + ")";
}

function renderGeo(g) {
  const panel = $("geo");
  panel.hidden = !g;
  if (!g) return;
  if (!world && !worldLoading) loadWorld();
  const db = g.database;
  $("geo-db").textContent = (db.database_type || "database") + ", built " + new Date(db.build_time).toISOString().slice(0, 10) +
    (db.last_error ? " · newest file refused: " + db.last_error : "");
  $("geo-note").textContent = g.note;

  const byCode = {};
  for (const c of g.countries) byCode[c.code] = c;
  const max = g.countries.reduce((m, c) => Math.max(m, c.peers), 0);
  if (world) {
    for (const p of $("world").children) {
      const code = p.dataset && p.dataset.code;
      if (!code) continue;
      const c = byCode[code];
      p.dataset.peers = String(c ? c.peers : 0);
      let fill = "#d5dae2";
      if (c && c.peers > 0) fill = shade(Math.log(c.peers + 1) / Math.log(max + 1));
      else if (c && c.connections_last_hour > 0) fill = "#f3e6dd"; // seen lately, nobody now
      p.setAttribute("fill", fill);
      p.classList.toggle("seen", !!c);
      p.firstChild.textContent = (countryNames[code] || code) + (c ? ": " + count(c.peers) + " peers now, " + count(c.connections_last_hour) + " connections in the last hour" : "");
    }
  }
  fillTable("countries", g.countries, "No upstream peers yet", (tr, c) => {
    tr.dataset.country = c.code;
    const name = cell(tr, "");
    const code = document.createElement("span");
    code.className = "code";
    code.textContent = c.code === "unknown" ? "–" : c.code;
    name.appendChild(code);
    name.appendChild(document.createTextNode(c.code === "unknown" ? "unknown" : (countryNames[c.code] || c.code)));
    cell(tr, count(c.peers), "num peers");
    cell(tr, count(c.connections_last_hour), "num");
    cell(tr, bytes(c.bytes_sent), "num");
  });
}

// axis picks a unit (B, KiB, MiB, GiB per second) and a round step in it
// (1, 2, 2.5 or 5 times a power of ten) so that max fits in about four
// steps.
function axis(max) {
  const units = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
  let u = 0;
  while (max >= 1024 * 4 && u < units.length - 1) { max /= 1024; u++; }
  const scale = Math.pow(1024, u);
  const raw = Math.max(max, 1) / 4;
  const pow = Math.pow(10, Math.floor(Math.log10(raw)));
  let step = 10 * pow;
  for (const m of [1, 2, 2.5, 5]) {
    if (m * pow >= raw) { step = m * pow; break; }
  }
  const label = (v) => {
    if (v === 0) return "0";
    const n = v / scale;
    return (Number.isInteger(n) ? n : n.toFixed(1)) + " " + units[u];
  };
  return { step: step * scale, label };
}

function draw() {
  const canvas = $("chart");
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  if (!last) return;

  const css = getComputedStyle(document.documentElement);
  const lineColor = css.getPropertyValue("--line").trim();
  const muted = css.getPropertyValue("--muted").trim();
  const pad = { l: 78, r: 12, t: 10, b: 26 };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  const samples = last.throughput.samples;
  const windowMs = last.throughput.window_seconds * 1000;
  const end = new Date(last.time).getTime();
  const start = end - windowMs;

  let max = 0;
  for (const s of samples) max = Math.max(max, s.bytes_out_per_second, s.bytes_in_per_second);
  const ax = axis(max > 0 ? max : 4 * 1024 * 1024);
  const step = ax.step;
  const top = Math.max(4 * step, Math.ceil(max / step) * step);

  const x = (t) => pad.l + pw * (t - start) / windowMs;
  const y = (v) => pad.t + ph * (1 - v / top);

  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = muted;
  ctx.strokeStyle = lineColor;
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let v = 0; v <= top + step / 2; v += step) {
    const yy = Math.round(y(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(pad.l, yy);
    ctx.lineTo(pad.l + pw, yy);
    ctx.stroke();
    ctx.fillText(ax.label(v), pad.l - 8, yy);
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const minutes = Math.round(windowMs / 60000);
  for (let m = minutes; m >= 0; m--) {
    const xx = x(end - m * 60000);
    ctx.fillText(m === 0 ? "now" : "−" + m + " min", xx, pad.t + ph + 8);
  }

  const line = (key, color, fill, dash) => {
    const pts = samples.map((s) => [x(new Date(s.time).getTime()), y(s[key])]).filter((p) => p[0] >= pad.l);
    if (pts.length === 0) return;
    ctx.beginPath();
    pts.forEach((p, i) => (i === 0 ? ctx.moveTo(p[0], p[1]) : ctx.lineTo(p[0], p[1])));
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.setLineDash(dash || []);
    ctx.stroke();
    ctx.setLineDash([]);
    if (fill) {
      ctx.lineTo(pts[pts.length - 1][0], y(0));
      ctx.lineTo(pts[0][0], y(0));
      ctx.closePath();
      ctx.fillStyle = fill;
      ctx.fill();
    }
  };
  // Out is drawn first and in dashed over it: with one client they match.
  line("bytes_out_per_second", css.getPropertyValue("--accent").trim(), "rgba(232, 89, 12, 0.12)");
  line("bytes_in_per_second", css.getPropertyValue("--accent2").trim(), null, [5, 4]);
}

async function poll() {
  try {
    const resp = await fetch("api/status", { cache: "no-store" });
    if (!resp.ok) throw new Error("/api/status answered " + resp.status);
    render(await resp.json());
  } catch (e) {
    const el = $("error");
    el.textContent = "Cannot reach Kitsune: " + e.message;
    el.hidden = false;
  }
  const every = last ? Math.max(1, last.throughput.interval_seconds) : 2;
  setTimeout(poll, every * 1000);
}

window.addEventListener("resize", draw);
poll();
