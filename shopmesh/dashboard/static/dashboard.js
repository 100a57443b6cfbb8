// The shopmesh dashboard page. It polls the dashboard's JSON API (the state every second, the
// traces every two) and draws the service graph, pods, faults, load and traces with plain DOM
// and SVG: no library, so the page works with no internet. Text that comes from the mesh is
// always set as textContent, never parsed as HTML.
//
// Every request carries the token of the link the page was opened with, in a header; the
// server also checks Host and Origin (shopmesh/dashboard/security.py).
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token") || "";
const STATE_EVERY_MS = 1000;
const TRACES_EVERY_MS = 2000;
const TRACE_LIMIT = 30;
const GOOD = 0.99;
const WARN = 0.95;
const SVG_NS = "http://www.w3.org/2000/svg";
const ABORT_CHOICES = [
  "UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "RESOURCE_EXHAUSTED", "ABORTED",
  "CANCELLED", "UNIMPLEMENTED", "DATA_LOSS", "PERMISSION_DENIED", "UNAUTHENTICATED",
  "NOT_FOUND", "FAILED_PRECONDITION", "INVALID_ARGUMENT", "ALREADY_EXISTS", "OUT_OF_RANGE",
];
// The graph's drawing area (the SVG's viewBox) and node size.
const WIDTH = 1000;
const HEIGHT = 470;
const NODE_W = 170;
const NODE_H = 68;

// --- talking to the server -----------------------------------------------------------------

async function api(path, method = "GET", body = undefined) {
  const options = { method, headers: { "X-Shopmesh-Token": TOKEN } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    throw new Error((data && data.error) || `HTTP ${response.status}`);
  }
  return data;
}

// --- small helpers -------------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function svg(tag, attributes = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

function health(rate) {
  if (rate === null || rate === undefined) return "idle";
  return rate >= GOOD ? "good" : rate >= WARN ? "warn" : "bad";
}

function percent(rate) {
  if (rate === null || rate === undefined) return "–";
  let text = (rate * 100).toFixed(rate === 1 ? 0 : 1);
  if (rate < 1 && text === "100.0") text = "99.9"; // never show a failure away
  return `${text} %`;
}

function perSecond(value) {
  if (value === null || value === undefined) return "–";
  return value >= 10 ? value.toFixed(0) : value.toFixed(1);
}

function millis(value) {
  if (value === null || value === undefined) return "–";
  return value >= 100 ? `${value.toFixed(0)} ms` : `${value.toFixed(1)} ms`;
}

function clock(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString([], { hour12: false });
}

// --- the service graph ---------------------------------------------------------------------

const graphView = { built: false, nodes: {}, edges: {} };

// Columns by the longest call path from the gateway; the widest column spread over the
// height, the first one centred, the ones between at the top, so that the gateway's edges to
// the last column pass below them.
function layout(graph) {
  const callers = {};
  for (const edge of graph.edges) (callers[edge.callee] ||= []).push(edge.caller);
  const depth = {};
  const visit = (id, path) => {
    if (id in depth) return depth[id];
    if (path.has(id)) return 0;
    path.add(id);
    const from = callers[id] || [];
    depth[id] = from.length ? 1 + Math.max(...from.map((caller) => visit(caller, path))) : 0;
    return depth[id];
  };
  for (const node of graph.nodes) visit(node.id, new Set());
  const columns = [];
  for (const node of graph.nodes) (columns[depth[node.id]] ||= []).push(node.id);
  const widest = Math.max(...columns.map((ids) => ids.length));
  const top = 62;
  const bottom = HEIGHT - 52;
  const slot = widest > 1 ? (bottom - top) / (widest - 1) : 0;
  const margin = NODE_W / 2 + 12;
  const positions = {};
  columns.forEach((ids, column) => {
    const x = columns.length > 1
      ? margin + (column * (WIDTH - 2 * margin)) / (columns.length - 1)
      : WIDTH / 2;
    ids.forEach((id, index) => {
      let y = top + index * slot;
      if (column === 0 && ids.length < widest) {
        y = (top + bottom) / 2 + (index - (ids.length - 1) / 2) * slot;
      }
      positions[id] = { x, y };
    });
  });
  return positions;
}

function buildGraph(graph) {
  const root = document.getElementById("graph");
  root.replaceChildren();
  const defs = svg("defs");
  for (const kind of ["good", "warn", "bad", "idle"]) {
    const marker = svg("marker", {
      id: `arrow-${kind}`, viewBox: "0 0 10 10", refX: 9, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
    });
    marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: `arrowhead ${kind}` }));
    defs.append(marker);
  }
  root.append(defs);
  const positions = layout(graph);
  const edgeLayer = svg("g", { class: "edges" });
  const labelLayer = svg("g", { class: "labels" });
  const nodeLayer = svg("g", { class: "nodes" });
  root.append(edgeLayer, nodeLayer, labelLayer);

  for (const edge of graph.edges) {
    const from = positions[edge.caller];
    const to = positions[edge.callee];
    const x1 = from.x + NODE_W / 2;
    const x2 = to.x - NODE_W / 2 - 4;
    const bend = (x2 - x1) / 2;
    const group = svg("g", { class: "edge idle", "data-edge": `${edge.caller}>${edge.callee}` });
    const path = svg("path", {
      d: `M ${x1} ${from.y} C ${x1 + bend} ${from.y}, ${x2 - bend} ${to.y}, ${x2} ${to.y}`,
      class: "idle", "marker-end": "url(#arrow-idle)",
    });
    const title = svg("title");
    title.textContent = `${edge.caller} → ${edge.callee}: ${edge.methods.join(", ")}`;
    path.append(title);
    group.append(path);
    edgeLayer.append(group);

    const label = svg("g", {
      class: "label",
      transform: `translate(${(x1 + x2) / 2}, ${(from.y + to.y) / 2})`,
    });
    const box = svg("rect", { rx: 4, ry: 4 });
    const text = svg("text", { "text-anchor": "middle" });
    const first = svg("tspan", { x: 0, dy: "-0.25em" });
    const second = svg("tspan", { x: 0, dy: "1.2em" });
    const retries = svg("tspan", { class: "retries" });
    text.append(first, second);
    label.append(box, text);
    labelLayer.append(label);
    graphView.edges[`${edge.caller}>${edge.callee}`] = {
      group, path, box, text, first, second, retries, label,
    };
  }

  for (const node of graph.nodes) {
    const { x, y } = positions[node.id];
    const group = svg("g", {
      class: "node idle", "data-node": node.id, transform: `translate(${x - NODE_W / 2}, ${y - NODE_H / 2})`,
    });
    const box = svg("rect", { class: `box idle`, width: NODE_W, height: NODE_H, rx: 8, ry: 8 });
    const name = svg("text", { class: "name", x: 12, y: 21 });
    name.textContent = node.id;
    const figures = svg("text", { class: "figures", x: 12, y: 41 });
    const latency = svg("text", { class: "latency", x: 12, y: 58 });
    const replicas = svg("g", { class: "replicas" });
    for (let index = 0; index < node.replicas; index += 1) {
      replicas.append(svg("circle", {
        class: "replica", cx: NODE_W - 14 - index * 14, cy: 16, r: 5,
      }));
    }
    const badge = svg("g", { class: "fault-group", visibility: "hidden" });
    const badgeBox = svg("rect", { class: "fault-badge", x: 0, y: -24, height: 19, rx: 9.5, ry: 9.5 });
    const badgeText = svg("text", { class: "fault", x: 9, y: -10 });
    badge.append(badgeBox, badgeText);
    group.append(box, name, figures, latency, replicas, badge);
    nodeLayer.append(group);
    graphView.nodes[node.id] = { group, box, figures, latency, replicas, badge, badgeBox, badgeText };
  }
  graphView.built = true;
}

function traffic(element, data) {
  const rate = data ? data.success_rate : null;
  element.dataset.rps = data ? String(data.rps) : "0";
  element.dataset.calls = data ? String(data.calls) : "0";
  element.dataset.successRate = rate === null || rate === undefined ? "" : String(rate);
  element.dataset.p99 = data && data.p99_ms !== null ? String(data.p99_ms) : "";
  element.dataset.retries = data ? String(data.retries) : "0";
  return health(data && data.calls ? rate : null);
}

function setKind(element, kind) {
  element.classList.remove("good", "warn", "bad", "idle");
  element.classList.add(kind);
}

function renderGraph(state, podHealth) {
  if (!graphView.built) buildGraph(state.graph);
  const stats = state.stats;
  for (const [id, view] of Object.entries(graphView.nodes)) {
    const data = !stats ? null : id === "gateway" ? stats.gateway.traffic : stats.services[id].inbound;
    const kind = traffic(view.group, data);
    setKind(view.group, kind);
    setKind(view.box, kind);
    view.figures.textContent = data && data.calls
      ? `${percent(data.success_rate)} · ${perSecond(data.rps)} rps`
      : "no calls";
    view.latency.textContent = data && data.calls ? `p99 ${millis(data.p99_ms)}` : "";
    if (id === "gateway" && stats && stats.gateway.rate_limited) {
      view.latency.textContent += ` · ${stats.gateway.rate_limited} rate-limited`;
    }
    const pods = id === "gateway" ? ["gateway"] : state.pods.filter((p) => p.service === id).map((p) => p.name);
    [...view.replicas.children].forEach((dot, index) => {
      const up = podHealth[pods[pods.length - 1 - index]];
      dot.setAttribute("class", `replica ${up ? "up" : "down"}`);
    });
    // The server describes the faults (ServiceStats.fault: "30% of calls fail with status
    // 14"), null when there is none; the red badge says it is a fault.
    const fault = stats && id !== "gateway" ? stats.services[id].fault : null;
    view.group.dataset.fault = fault || "";
    view.badge.setAttribute("visibility", fault ? "visible" : "hidden");
    view.badgeText.textContent = fault || "";
    if (fault) {
      // Right-aligned above the node: the last column's badges stay inside the drawing.
      const width = view.badgeText.getComputedTextLength() + 18;
      view.badgeBox.setAttribute("width", width);
      view.badgeBox.setAttribute("x", NODE_W - width);
      view.badgeText.setAttribute("x", NODE_W - width + 9);
    }
  }
  const edges = stats ? Object.fromEntries(stats.edges.map((e) => [`${e.caller}>${e.callee}`, e.traffic])) : {};
  for (const [key, view] of Object.entries(graphView.edges)) {
    const data = edges[key] || null;
    const kind = traffic(view.group, data);
    view.path.setAttribute("class", kind);
    view.path.setAttribute("marker-end", `url(#arrow-${kind})`);
    if (data && data.calls) {
      view.first.textContent = `${perSecond(data.rps)} rps · ${percent(data.success_rate)}`;
      view.second.textContent = `p99 ${millis(data.p99_ms)}`;
      if (data.retries) {
        view.retries.textContent = ` · ↻ ${data.retries}`;
        view.second.append(view.retries);
      } else {
        view.retries.remove();
      }
      view.label.setAttribute("visibility", "visible");
    } else {
      view.label.setAttribute("visibility", "hidden");
    }
    const box = view.text.getBBox();
    view.box.setAttribute("x", box.x - 6);
    view.box.setAttribute("y", box.y - 3);
    view.box.setAttribute("width", box.width + 12);
    view.box.setAttribute("height", box.height + 6);
  }
}

// --- pods and processes --------------------------------------------------------------------

function healthCell(row) {
  const word = row ? row.health : "unknown";
  return el("td", { class: "health", "data-healthy": row && row.healthy ? "yes" : "no" },
    el("span", { class: `dot ${row && row.healthy ? "up" : "down"}` }), word);
}

function renderPods(state) {
  const rows = Object.fromEntries(state.processes.map((row) => [row.name, row]));
  const podHealth = {};
  const body = document.querySelector("#pods tbody");
  const lines = [];
  let service = null;
  for (const pod of state.pods) {
    if (pod.service !== service) {
      service = pod.service;
      lines.push(el("tr", {}, el("td", { class: "group", colspan: "4", text: service })));
    }
    const app = rows[pod.app];
    const sidecar = rows[pod.sidecar];
    podHealth[pod.name] = Boolean(app && app.healthy && sidecar && sidecar.healthy);
    const full = sidecar ? sidecar.detail : "";
    const detail = brief(full);
    lines.push(el("tr", { "data-pod": pod.name },
      el("td", { text: pod.name }), healthCell(app), healthCell(sidecar),
      el("td", { class: "detail", title: full, text: detail })));
  }
  body.replaceChildren(...lines);

  const others = state.processes.filter((row) => !row.name.includes("."));
  podHealth.gateway = Boolean(rows.gateway && rows.gateway.healthy);
  document.querySelector("#processes tbody").replaceChildren(...others.map((row) =>
    el("tr", { "data-process": row.name },
      el("td", { text: row.name }), healthCell(row),
      el("td", { class: "detail", title: row.detail, text: brief(row.detail) }))));
  return podHealth;
}

// A status detail without the ports nobody connects to by hand: "inbound :41234 health :41235
// metrics :41236, upstreams 5/5 healthy" reads "inbound :41234, upstreams 5/5 healthy".
function brief(detail) {
  const [ports, ...rest] = detail.split(", ");
  const first = /^\w+ :\d+ health :\d+/.test(ports) ? ports.split(" ").slice(0, 2).join(" ") : ports;
  return [first, ...rest].join(", ");
}

// --- faults --------------------------------------------------------------------------------

const faultRows = {};

function message(id, text, failed = false) {
  const node = document.getElementById(id);
  node.textContent = text;
  node.classList.toggle("error", failed);
}

function wholeOrNull(input) {
  return input.value.trim() === "" ? null : Number(input.value);
}

function buildFaults(services) {
  const body = document.querySelector("#faults tbody");
  for (const service of services) {
    const abort = el("input", { class: "abort", type: "number", min: "0", max: "100", placeholder: "%" });
    const status = el("select", { class: "status" },
      ...ABORT_CHOICES.map((name) => el("option", { value: name, text: name })));
    const delay = el("input", { class: "delay", type: "number", min: "0", placeholder: "ms" });
    const inject = el("button", { class: "inject primary", type: "button", text: "Inject" });
    const clear = el("button", { class: "clear danger", type: "button", text: "Clear" });
    const inForce = el("td", { class: "in-force", text: "…" });
    inject.addEventListener("click", async () => {
      const fault = { abort_percent: wholeOrNull(abort), delay_ms: wholeOrNull(delay) };
      if (fault.abort_percent !== null) fault.grpc_status = status.value;
      try {
        const answer = await api(`/api/faults/${encodeURIComponent(service)}`, "POST", fault);
        message("fault-message", `${service}: ${answer.fault}`);
        refreshState();
      } catch (error) {
        message("fault-message", `${service}: ${error.message}`, true);
      }
    });
    clear.addEventListener("click", async () => {
      try {
        await api(`/api/faults/${encodeURIComponent(service)}`, "DELETE");
        message("fault-message", `${service}: faults cleared`);
        refreshState();
      } catch (error) {
        message("fault-message", `${service}: ${error.message}`, true);
      }
    });
    body.append(el("tr", { "data-fault-row": service },
      el("td", { text: service }), inForce,
      el("td", {}, abort), el("td", {}, status), el("td", {}, delay),
      el("td", { class: "actions" }, inject, " ", clear)));
    faultRows[service] = inForce;
  }
}

function renderFaults(state) {
  const services = state.graph.nodes.filter((n) => n.kind === "service").map((n) => n.id);
  if (!Object.keys(faultRows).length) buildFaults(services);
  for (const service of services) {
    const cell = faultRows[service];
    const fault = state.stats ? state.stats.services[service].fault : undefined;
    cell.textContent = fault === undefined ? "…" : fault || "none";
    cell.classList.toggle("active", Boolean(fault));
    cell.dataset.fault = fault || "";
  }
}

// --- load ----------------------------------------------------------------------------------

function codes(counts) {
  return Object.entries(counts).map(([code, n]) => `${code} ${n}`).join(" · ");
}

function renderLoad(load) {
  const run = load.run;
  const line = document.getElementById("load-state");
  const running = Boolean(run && (run.state === "running" || run.state === "draining"));
  document.getElementById("load-start").disabled = running;
  document.getElementById("load-stop").disabled = !running;
  line.dataset.state = run ? run.state : "none";
  line.dataset.sent = run ? String(run.sent) : "0";
  if (!run) {
    line.textContent = "no load run yet";
  } else {
    const ended = run.stop_reason ? ` (ended by ${run.stop_reason})` : "";
    line.replaceChildren(
      el("b", { text: run.state }), ended,
      ` · ${run.elapsed.toFixed(0)} s of ${run.settings.duration} s at ${run.settings.rate} calls/s · sent `,
      el("b", { text: String(run.sent) }), " · OK ",
      el("b", { text: percent(run.ok_rate) }),
      ` · skipped ${run.skipped} · in flight ${run.in_flight}`);
  }
  if (load.failure) message("load-message", `the load run failed: ${load.failure}`, true);
  const rpcs = run ? run.rpcs : [];
  document.querySelector("#load-rpcs tbody").replaceChildren(...rpcs.map((rpc) =>
    el("tr", { "data-rpc": rpc.method },
      el("td", { text: rpc.method }), el("td", { text: String(rpc.count) }),
      el("td", { text: percent(rpc.success_rate) }), el("td", { text: millis(rpc.p50_ms) }),
      el("td", { text: millis(rpc.p99_ms) }), el("td", { class: "detail", text: codes(rpc.codes) }))));
}

function bindLoad() {
  document.getElementById("load-start").addEventListener("click", async () => {
    const settings = {
      rate: Number(document.getElementById("load-rate").value),
      duration: Number(document.getElementById("load-duration").value),
    };
    try {
      renderLoad(await api("/api/load", "POST", settings));
      message("load-message", "");
    } catch (error) {
      message("load-message", error.message, true);
    }
  });
  document.getElementById("load-stop").addEventListener("click", async () => {
    try {
      renderLoad(await api("/api/load", "DELETE"));
    } catch (error) {
      message("load-message", error.message, true);
    }
  });
}

// --- traces --------------------------------------------------------------------------------

let selectedTrace = null;
const traceRows = new Map();

// Rows are kept per trace and updated in place, so a row being clicked is never replaced by
// an identical one; only traces that left the list go.
function renderTraces(answer) {
  document.getElementById("traces-note").textContent = answer.note || "";
  const body = document.querySelector("#traces tbody");
  const wanted = new Set(answer.traces.map((trace) => trace.trace_id));
  for (const [traceId, row] of traceRows) {
    if (!wanted.has(traceId)) {
      row.remove();
      traceRows.delete(traceId);
    }
  }
  let previous = null;
  for (const trace of answer.traces) {
    let row = traceRows.get(trace.trace_id);
    if (!row) {
      row = el("tr", { "data-trace-id": trace.trace_id });
      row.addEventListener("click", () => showTrace(trace.trace_id));
      traceRows.set(trace.trace_id, row);
    }
    fillTraceRow(row, trace);
    const next = previous ? previous.nextSibling : body.firstChild;
    if (next !== row) body.insertBefore(row, next);
    previous = row;
  }
}

function fillTraceRow(row, trace) {
  const services = trace.services.join(" ");
  const stamp = `${trace.span_count} ${services} ${trace.failed} ${trace.root.name}`;
  if (row.dataset.stamp === stamp) return;
  row.dataset.stamp = stamp;
  row.dataset.root = trace.root.name;
  row.dataset.services = services;
  row.dataset.spanCount = String(trace.span_count);
  row.classList.toggle("selected", trace.trace_id === selectedTrace);
  row.replaceChildren(
    el("td", { text: clock(trace.start_unix_nano / 1e9) }),
    el("td", { class: "root", title: trace.root.name, text: trace.root.label }),
    el("td", { text: millis(trace.duration_ms) }),
    el("td", { text: String(trace.span_count) }),
    el("td", { title: trace.failed ? "failed" : "ok" },
      el("span", { class: `dot ${trace.failed ? "failed" : "ok"}` })));
}

let traceAsks = 0;

// Only the answer to the latest click is drawn: one that comes back after another trace (or
// the same again) was clicked is dropped, so a slow answer never replaces a newer one.
async function showTrace(traceId) {
  selectedTrace = traceId;
  const asked = ++traceAsks;
  for (const row of document.querySelectorAll("#traces tbody tr")) {
    row.classList.toggle("selected", row.dataset.traceId === traceId);
  }
  const title = document.getElementById("trace-title");
  try {
    const trace = await api(`/api/traces/${encodeURIComponent(traceId)}`);
    if (asked !== traceAsks) return;
    title.textContent = `${trace.trace_id} · ${trace.span_count} spans · ${millis(trace.duration_ms)}`;
    renderWaterfall(trace);
  } catch (error) {
    if (asked === traceAsks) title.textContent = error.message;
  }
}

function renderWaterfall(trace) {
  const total = Math.max(trace.duration_ms, 0.001);
  const head = el("div", { class: "span-row head" },
    ...["service", "operation", "start", "", "duration", "status", "try"].map((t) =>
      el("span", { class: t === "start" || t === "duration" ? "num" : "", text: t })));
  const rows = trace.spans.map((span) => {
    const bar = el("div", {
      class: `bar ${span.failed ? "failed" : isEnvoy(span.service) ? "envoy" : ""}`,
    });
    bar.style.left = `${(span.offset_ms / total) * 100}%`;
    bar.style.width = `${Math.max((span.duration_ms / total) * 100, 0.4)}%`;
    const operation = el("span", { title: span.name, text: span.name });
    operation.style.paddingLeft = `${span.depth * 10}px`;
    const attempt = span.attempt === null ? "" : `${span.attempt}/${span.attempts}`;
    return el("div", {
      class: "span-row", "data-span-id": span.span_id, "data-service": span.service,
      "data-status": span.status,
    },
    el("span", { text: span.service }), operation,
    el("span", { class: "num", text: `+${span.offset_ms.toFixed(1)}` }),
    el("div", { class: "track" }, bar),
    el("span", { class: "num", text: millis(span.duration_ms) }),
    el("span", { class: span.failed ? "failed" : "ok", text: span.status }),
    el("span", { class: "attempt", text: attempt }));
  });
  document.getElementById("waterfall").replaceChildren(head, ...rows);
}

function isEnvoy(service) {
  return service === "gateway" || service.endsWith("-sidecar");
}

// --- the loops -----------------------------------------------------------------------------

function live(ok, text) {
  const node = document.getElementById("updated");
  node.dataset.live = ok ? "yes" : "no";
  node.textContent = text;
}

// One loop asks for the state: a refresh asked for (a click, another window) while a request
// is in flight is made as soon as that one has answered, never as a second loop.
const stateLoop = { timer: null, inFlight: false, again: false };

async function refreshState() {
  if (stateLoop.inFlight) {
    stateLoop.again = true;
    return;
  }
  clearTimeout(stateLoop.timer);
  stateLoop.inFlight = true;
  const seconds = document.getElementById("window").value;
  try {
    const state = await api(`/api/state?window=${seconds}`);
    document.getElementById("gateway").textContent = state.gateway;
    document.getElementById("state-dir").textContent = state.state_dir;
    const podHealth = renderPods(state);
    renderGraph(state, podHealth);
    renderFaults(state);
    renderLoad(state.load);
    const sampled = state.stats ? ` · ${state.stats.window_seconds.toFixed(0)} s sampled` : " · sampling…";
    live(true, `live · ${clock(state.generated_unix)}${sampled}`);
  } catch (error) {
    live(false, `not updating: ${error.message}`);
  } finally {
    stateLoop.inFlight = false;
    if (stateLoop.again) {
      stateLoop.again = false;
      refreshState();
    } else {
      stateLoop.timer = setTimeout(refreshState, STATE_EVERY_MS);
    }
  }
}

async function refreshTraces() {
  try {
    renderTraces(await api(`/api/traces?limit=${TRACE_LIMIT}`));
  } catch (error) {
    document.getElementById("traces-note").textContent = error.message;
  } finally {
    setTimeout(refreshTraces, TRACES_EVERY_MS);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  bindLoad();
  document.getElementById("window").addEventListener("change", refreshState);
  refreshState();
  refreshTraces();
});
