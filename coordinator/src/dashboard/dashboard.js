// carpool's dashboard: reads the coordinator's frames from /events (server-sent events) and
// draws them. Plain browser APIs only; every figure is written as text, never as markup.
"use strict";
(() => {
  const HISTORY = 600;
  const PALETTE = ["#0b6bcb", "#1a7f37", "#b42318", "#9a6700", "#8250df", "#bf3989", "#0a7e8c", "#6e7781"];
  const $ = (id) => document.getElementById(id);
  let history = [];
  let lastSeq = 0;
  let updates = 0;
  let latest = null;

  const int = (n) => Number(n || 0).toLocaleString("en-US");
  const usd = (n) => "$" + (n >= 100 ? n.toFixed(2) : n >= 1 ? n.toFixed(3) : n.toFixed(6));
  const num = (n, d) => Number(n || 0).toFixed(d);
  const pct = (x) => (100 * x).toFixed(0) + "%";
  function ms(n) {
    if (n === undefined || n === null) return "–";
    if (n < 1000) return n + " ms";
    if (n < 60000) return (n / 1000).toFixed(n < 10000 ? 2 : 1) + " s";
    return (n / 60000).toFixed(1) + " min";
  }
  function age(n) {
    const s = Math.floor(n / 1000);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  function set(id, text) {
    const e = $(id);
    if (e && e.textContent !== text) e.textContent = text;
  }
  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }
  function percentiles(t) {
    return t && t.n > 0 ? ms(t.p50) + " · " + ms(t.p95) + " · " + ms(t.p99) : "–";
  }
  function bar(td, value, target, label) {
    const outer = document.createElement("span");
    outer.className = "bar";
    outer.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = value > target ? "fill over" : "fill";
    fill.style.width = Math.min(100, 100 * value) + "%";
    const mark = document.createElement("span");
    mark.className = "target";
    mark.style.left = Math.min(100, 100 * target) + "%";
    outer.append(fill, mark);
    const figure = document.createElement("span");
    figure.className = "bar-figure";
    figure.textContent = pct(value);
    td.title = label + " " + pct(value) + " of its allotment, target " + pct(target);
    td.append(outer, figure);
  }
  // Replaces a table body's rows only when their text changed (no flicker, no jump).
  function fill(tbody, rows) {
    const key = rows.map((r) => r.dataset.key + "\u0000" + r.textContent + "\u0000" + (r.dataset.style || "")).join("\u0001");
    if (tbody.dataset.key === key) return;
    tbody.dataset.key = key;
    tbody.replaceChildren(...rows);
  }

  function renderFunctions(d) {
    const rows = d.functions.map((f) => {
      const tr = document.createElement("tr");
      tr.dataset.key = f.name;
      tr.dataset.function = f.name;
      const name = document.createElement("th");
      name.scope = "row";
      name.className = "name";
      name.textContent = f.name;
      tr.appendChild(name);
      cell(tr, int(f.pending)).dataset.k = "pending";
      cell(tr, int(f.running)).dataset.k = "running";
      cell(tr, int(f.succeeded)).dataset.k = "succeeded";
      cell(tr, int(f.failed), f.failed > 0 ? "error" : "").dataset.k = "failed";
      cell(tr, num(f.rate, 1)).dataset.k = "rate";
      cell(tr, f.memory_mb + " MB" + (f.memory_reason && f.memory_reason !== "only" ? " (" + f.memory_reason + ")" : "")).dataset.k = "memory";
      cell(tr, num(f.slots_mean, 1) + " · " + (f.slots_learned || "–")).dataset.k = "limit";
      cell(tr, percentiles(f.to_start_ms)).dataset.k = "to_start";
      cell(tr, percentiles(f.execution_ms)).dataset.k = "execution";
      cell(tr, int(f.cold_starts) + " · " + ms(f.cold_start_p50_ms) + " · " + ms(f.cold_start_max_ms)).dataset.k = "cold_starts";
      cell(tr, usd(f.cost_usd) + " · " + usd(f.lambda_usd)).dataset.k = "cost";
      return tr;
    });
    fill(document.querySelector("#functions tbody"), rows);
    const more = $("functions-unlisted");
    more.hidden = !d.functions_unlisted;
    if (d.functions_unlisted) set("functions-unlisted", "and " + int(d.functions_unlisted) + " more, less busy");
  }

  function renderWorkers(d) {
    const rows = d.workers.map((w) => {
      const tr = document.createElement("tr");
      tr.dataset.key = w.id;
      tr.dataset.worker = w.id;
      const id = document.createElement("th");
      id.scope = "row";
      id.textContent = w.id;
      tr.appendChild(id);
      cell(tr, w.function);
      cell(tr, w.state + (w.phase ? " · " + w.phase : ""));
      cell(tr, w.state === "starting" ? "– / " + w.limit : w.running + " / " + w.limit);
      bar(cell(tr, ""), w.cpu, d.targets.cpu, "CPU");
      bar(cell(tr, ""), w.memory, d.targets.memory, "Memory");
      tr.dataset.style = String(Math.round(100 * w.cpu)) + "/" + String(Math.round(100 * w.memory));
      cell(tr, w.memory_mb + " MB · " + w.vcpus + " vCPU");
      cell(tr, age(w.age_ms));
      cell(tr, w.state === "starting" ? "–" : age(w.life_left_ms));
      cell(tr, int(w.done));
      return tr;
    });
    fill(document.querySelector("#workers tbody"), rows);
    const more = $("workers-unlisted");
    more.hidden = !d.workers_unlisted;
    if (d.workers_unlisted) set("workers-unlisted", "and " + int(d.workers_unlisted) + " more");
  }

  function renderFailures(d) {
    const items = d.failures.map((f) => {
      const li = document.createElement("li");
      li.dataset.key = String(f.task_id);
      const when = document.createElement("span");
      when.className = "when";
      when.textContent = new Date(f.t).toLocaleTimeString() + " ";
      const what = document.createElement("strong");
      what.textContent = f.function + " task " + f.task_id;
      const where = document.createTextNode((f.worker_id ? " on " + f.worker_id : "") + ": ");
      const why = document.createElement("span");
      why.textContent = f.error;
      li.append(when, what, where, why);
      return li;
    });
    fill($("failures"), items);
    $("no-failures").hidden = items.length > 0;
    const spawn = d.total.last_spawn_error;
    $("spawn-error").hidden = !spawn;
    if (spawn) set("spawn-error", "Latest failed spawn: " + spawn);
  }

  function render(d) {
    set("role", "active");
    $("role").className = "badge active";
    $("standby").hidden = true;
    set("uptime", age(d.uptime_ms));
    const t = d.total;
    set("total-pending", int(t.pending));
    set("total-running", int(t.running));
    set("total-succeeded", int(t.succeeded));
    set("total-failed", int(t.failed));
    set("total-rate", num(d.functions.reduce((a, f) => a + f.rate, 0), 1));
    set("total-workers", int(t.workers_live));
    set("total-starting", int(t.workers_starting));
    const b = d.bill;
    set("bill-cost", usd(b.cost_usd));
    set("bill-gbs", num(b.billed_gb_s, 1));
    set("bill-invocations", int(b.invocations));
    set("bill-lambda", usd(b.lambda_usd));
    set("bill-lambda-gbs", num(b.lambda_gb_s, 1));
    set("bill-requests", int(b.lambda_requests));
    set("bill-saving", b.lambda_usd > 0 ? pct(b.saving) : "–");
    $("bill-saving").className = "num big " + (b.lambda_usd > 0 ? (b.saving >= 0 ? "good" : "bad") : "");
    renderFunctions(d);
    renderWorkers(d);
    renderFailures(d);
    drawCharts();
  }

  function renderStandby(d) {
    set("role", "standby");
    $("role").className = "badge standby";
    $("standby").hidden = false;
    set("active-url", d.active_url || "unknown yet");
    const link = $("active-link");
    try {
      const u = new URL(d.active_url);
      link.href = location.protocol + "//" + u.hostname + (location.port ? ":" + location.port : "") + "/";
      link.hidden = false;
    } catch (e) {
      link.hidden = true;
    }
  }

  // --- charts -------------------------------------------------------------------------
  function functionColors() {
    const names = new Set();
    for (const p of history) for (const n of Object.keys(p.functions)) names.add(n);
    const colors = {};
    [...names].sort().forEach((n, i) => (colors[n] = PALETTE[i % PALETTE.length]));
    return colors;
  }
  function canvas(id) {
    const c = $(id);
    const ratio = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (c.width !== Math.round(w * ratio) || c.height !== Math.round(h * ratio)) {
      c.width = Math.round(w * ratio);
      c.height = Math.round(h * ratio);
    }
    const g = c.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, h);
    return { g, w, h };
  }
  function axes(g, w, h, top, pad) {
    const style = getComputedStyle(document.documentElement);
    g.strokeStyle = style.getPropertyValue("--line");
    g.fillStyle = style.getPropertyValue("--muted");
    g.font = "11px system-ui, sans-serif";
    g.lineWidth = 1;
    for (const f of [0, 0.5, 1]) {
      const y = pad.t + (h - pad.t - pad.b) * (1 - f);
      g.beginPath();
      g.moveTo(pad.l, y);
      g.lineTo(w - pad.r, y);
      g.stroke();
      g.fillText(String(Math.round(top * f)), 2, y + 4);
    }
    if (history.length > 1) {
      const span = (history[history.length - 1].t - history[0].t) / 1000;
      g.fillText("−" + age(span * 1000), pad.l, h - 2);
      g.fillText("now", w - pad.r - 20, h - 2);
    }
  }
  function xy(w, h, pad, top) {
    const n = history.length;
    const t0 = n ? history[0].t : 0, t1 = n ? history[n - 1].t : 1;
    return (t, v) => [
      pad.l + ((w - pad.l - pad.r) * (t - t0)) / Math.max(1, t1 - t0),
      pad.t + (h - pad.t - pad.b) * (1 - v / top),
    ];
  }
  function niceTop(max) {
    if (max <= 4) return 4;
    const p = Math.pow(10, Math.floor(Math.log10(max)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= max) return m * p;
    return 10 * p;
  }
  function line(g, pts, color, width) {
    if (pts.length === 0) return;
    g.strokeStyle = color;
    g.lineWidth = width;
    g.beginPath();
    pts.forEach(([x, y], i) => (i ? g.lineTo(x, y) : g.moveTo(x, y)));
    g.stroke();
  }
  function drawCharts() {
    const pad = { l: 34, r: 6, t: 6, b: 16 };
    const colors = functionColors();
    {
      const { g, w, h } = canvas("chart-limit");
      let max = 0;
      for (const p of history) for (const f of Object.values(p.functions)) max = Math.max(max, f.limit_max);
      const top = niceTop(max);
      axes(g, w, h, top, pad);
      const at = xy(w, h, pad, top);
      for (const [name, color] of Object.entries(colors)) {
        const pts = history.filter((p) => p.functions[name] && p.functions[name].workers > 0);
        if (pts.length === 0) continue;
        g.fillStyle = color + "33";
        g.beginPath();
        pts.forEach((p, i) => {
          const [x, y] = at(p.t, p.functions[name].limit_max);
          i ? g.lineTo(x, y) : g.moveTo(x, y);
        });
        for (let i = pts.length - 1; i >= 0; i--) {
          const [x, y] = at(pts[i].t, pts[i].functions[name].limit_min);
          g.lineTo(x, y);
        }
        g.closePath();
        g.fill();
        line(g, pts.map((p) => at(p.t, p.functions[name].limit_mean)), color, 2);
      }
      const legend = $("legend-limit");
      const items = Object.entries(colors).map(([name, color]) => {
        const li = document.createElement("li");
        li.dataset.key = name;
        const s = document.createElement("span");
        s.className = "swatch";
        s.style.background = color;
        li.append(s, document.createTextNode(name));
        return li;
      });
      fill(legend, items);
    }
    {
      const { g, w, h } = canvas("chart-queue");
      let max = 0;
      for (const p of history) max = Math.max(max, p.pending, p.running);
      const top = niceTop(max);
      axes(g, w, h, top, pad);
      const at = xy(w, h, pad, top);
      const style = getComputedStyle(document.documentElement);
      line(g, history.map((p) => at(p.t, p.pending)), style.getPropertyValue("--pending"), 2);
      line(g, history.map((p) => at(p.t, p.running)), style.getPropertyValue("--running"), 2);
    }
  }

  // --- the stream ---------------------------------------------------------------------
  function apply(d, full) {
    if (full) {
      history = [];
      lastSeq = 0;
    }
    updates += 1;
    document.body.dataset.updates = String(updates);
    set("status", "live · " + new Date(d.t).toLocaleTimeString());
    if (d.role === "standby") {
      renderStandby(d);
      return;
    }
    for (const p of d.history || []) {
      if (p.seq > lastSeq) {
        history.push(p);
        lastSeq = p.seq;
      }
    }
    if (history.length > HISTORY) history = history.slice(history.length - HISTORY);
    latest = d;
    render(d);
  }
  function connect() {
    const events = new EventSource("/events");
    events.addEventListener("full", (e) => apply(JSON.parse(e.data), true));
    events.addEventListener("update", (e) => apply(JSON.parse(e.data), false));
    events.onerror = () => set("status", "reconnecting…");
  }
  window.addEventListener("resize", () => latest && drawCharts());
  connect();
})();
