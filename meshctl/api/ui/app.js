// meshctl dashboard: one module, no dependencies, served by the controller at /ui/.
// The API token lives in this tab's sessionStorage and travels only in the Authorization
// header of same-origin fetch() calls (also for the event stream, which EventSource cannot do).
// One module on purpose (no build step, nothing to bundle), ~650 lines in sections: the API,
// sign-in, status and map, drain/undrain, routes, links heatmap, link history, events, wiring.

const TOKEN_KEY = "meshctl.token";
const STATUS_EVERY_MS = 3000;
const ROUTES_EVERY_MS = 5000;
const LINKS_EVERY_MS = 10000;
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
const state = {
  token: null, who: null, status: null, regions: new Map(), routes: null, routesEtag: null,
  links: null, linksEtag: null, selected: null, view: "map", mapKey: null, lastEventId: 0, streamAbort: null, timers: [],
  matrixShape: null, matrixCells: new Map(), linkByPair: new Map(),
  history: null,
};

// --- the API ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

async function problemDetail(res) {
  // RFC 9457 problem details, or the older {"detail": ...} shapes
  try {
    const body = await res.json();
    if (Array.isArray(body.errors) && body.errors.length) {
      return body.errors.map((e) => `${e.field}: ${e.message}`).join("; ");
    }
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((e) => e.msg).join("; ");
    return body.title || res.statusText;
  } catch {
    return res.statusText || `HTTP ${res.status}`;
  }
}

async function api(path, { method = "GET", body, headers = {}, token = state.token } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, cache: "no-store" };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, "cannot reach the controller");
  }
  if (res.status === 304) return { notModified: true, res };
  if (!res.ok) {
    const detail = await problemDetail(res);
    if (res.status === 401 && token === state.token && state.who) signOut(`Signed out: ${detail}`);
    throw new ApiError(res.status, detail);
  }
  return { data: await res.json(), res };
}

// --- sign in ------------------------------------------------------------------------------

async function signIn(token) {
  const { data } = await api("/v1/whoami", { token });
  if (data.kind !== "token") throw new ApiError(403, "that is a node credential: sign in with an API token");
  state.token = token;
  state.who = data;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  $("who").textContent = `${data.name} (${data.scope})`;
  $("operator").hidden = !data.can_drain;
  await Promise.all([refreshStatus(), refreshRoutes(), refreshLinks(), loadEvents()]);
  startStream();
  state.timers.push(setInterval(() => visible() && refreshStatus(), STATUS_EVERY_MS));
  state.timers.push(setInterval(() => visible() && refreshRoutes(), ROUTES_EVERY_MS));
  state.timers.push(setInterval(() => visible() && state.view === "matrix" && refreshLinks(), LINKS_EVERY_MS));
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  state.timers.forEach(clearInterval);
  state.timers = [];
  if (state.streamAbort) state.streamAbort.abort();
  Object.assign(state, { token: null, who: null, streamAbort: null, routesEtag: null, linksEtag: null, lastEventId: 0, mapKey: null, matrixShape: null });
  $("app").hidden = true;
  $("signout").hidden = true;
  $("signin").hidden = false;
  $("who").textContent = "";
  $("banners").replaceChildren();
  setLive("off");
  $("token").value = "";
  $("signin-error").textContent = message;
}

function signInMessage(err) {
  if (err.status === 401) {
    return `That token was refused (${err.message}). Check it, or ask an admin: meshctl tokens create --scope reader`;
  }
  if (err.status === 403) return `That token cannot read the mesh: ${err.message}`;
  return `Cannot sign in: ${err.message}`;
}

const visible = () => document.visibilityState !== "hidden";

// --- small DOM helpers ----------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

const fmt = (x, digits = 1) => (x === null || x === undefined ? "-" : Number(x).toFixed(digits));
const cloudOf = (id) => id.split(":", 1)[0];
const byCloud = (a, b) => cloudOf(a).localeCompare(cloudOf(b)) || a.localeCompare(b);

function ago(iso) {
  if (!iso) return "-";
  const s = (Date.now() - Date.parse(iso)) / 1000;
  if (s < 90) return `${Math.max(0, Math.round(s))}s ago`;
  if (s < 5400) return `${Math.round(s / 60)}m ago`;
  return `${Math.round(s / 3600)}h ago`;
}

function setOptions(select, ids, keep = true) {
  const old = select.value;
  select.replaceChildren(...ids.map((id) => el("option", { value: id, text: id })));
  if (keep && ids.includes(old)) select.value = old;
}

// --- status: header, banners, map ---------------------------------------------------------

async function refreshStatus() {
  try {
    const { data } = await api("/v1/status");
    state.status = data;
    state.regions = new Map(data.regions.map((r) => [r.id, r]));
    syncRegionLists();
    renderHeader();
    renderMap();
    renderRegionPanel();
  } catch (err) {
    if (err.status !== 401) showBanner("conn", `Status: ${err.message}`);
  }
}

function renderHeader() {
  const st = state.status;
  const by = st.regions_by_state;
  const summary = $("summary");
  summary.replaceChildren(
    `generation ${st.generation} · `,
    el("span", { class: by.drained ? "n drained" : "n", text: `${by.drained || 0} drained` }), " · ",
    el("span", { class: by.degraded ? "n degraded" : "n", text: `${by.degraded || 0} degraded` }), " · ",
    el("span", { class: "n", text: `${by.active || 0} active` }),
    ` · nodes ${st.nodes_up} up / ${st.nodes_down} down`,
  );
  const banners = [];
  if (st.frozen) {
    banners.push(el("div", { class: "banner", id: "frozen",
      text: "FROZEN: reports from most regions stopped; the controller drains nothing until they return" }));
  }
  for (const a of st.alerts || []) banners.push(el("div", { class: "banner alert", text: `ALERT: ${a}` }));
  $("banners").replaceChildren(...banners);
}

function showBanner(key, text) {
  const id = `banner-${key}`;
  let b = $(id);
  if (!b) {
    b = el("div", { class: "banner alert", id });
    $("banners").append(b);
  }
  b.textContent = text;
}

const X = (lon) => Number(lon) + 180;
const Y = (lat) => 90 - Number(lat);

function drawGraticule() {
  const g = $("graticule");
  const lines = [];
  for (let lon = -150; lon <= 150; lon += 30) lines.push(svg("line", { x1: X(lon), y1: 0, x2: X(lon), y2: 180 }));
  for (let lat = -60; lat <= 60; lat += 30) lines.push(svg("line", { x1: 0, y1: Y(lat), x2: 360, y2: Y(lat) }));
  g.replaceChildren(...lines);
}

function relayedLinks() {
  // region pairs (either direction) that carry at least one relayed route, with how many
  const count = new Map();
  for (const r of state.routes?.routes || []) {
    if (!r.reachable || r.path.length <= 2) continue;
    for (let i = 0; i + 1 < r.path.length; i++) {
      const [a, b] = [r.path[i], r.path[i + 1]].sort();
      const key = `${a}|${b}`;
      count.set(key, (count.get(key) || 0) + 1);
    }
  }
  return count;
}

function renderMap() {
  // redraw only on change, so a tooltip being read is not pulled away every few seconds
  const key = JSON.stringify([state.selected, state.routes?.generation,
    [...state.regions.values()].map((r) => [r.id, r.lat, r.lon, r.state, r.nodes_up, r.nodes_total, r.drain?.reason])]);
  if (key === state.mapKey) return;
  state.mapKey = key;
  const lines = [];
  const at = positions();
  for (const [key, n] of relayedLinks()) {
    const [a, b] = key.split("|").map((id) => state.regions.get(id));
    if (!a || !b) continue;
    const [[x1, y1], [x2, y2]] = [at.get(a.id), at.get(b.id)];
    const line = svg("line", {
      x1: x1.toFixed(2), y1: y1.toFixed(2), x2: x2.toFixed(2), y2: y2.toFixed(2),
      "stroke-width": Math.min(2.5, 0.4 + 0.25 * Math.sqrt(n)), "data-pair": key,
    });
    line.append(svg("title"));
    line.firstChild.textContent = `${a.id} ↔ ${b.id}: ${n} relayed route${n === 1 ? "" : "s"}`;
    lines.push(line);
  }
  $("relays").replaceChildren(...lines);
  const dots = [];
  // trouble on top: active first, then degraded, then drained; big dots under small ones
  const rank = { active: 0, degraded: 1, drained: 2 };
  const regions = [...state.regions.values()].sort((a, b) => rank[a.state] - rank[b.state] || b.nodes_up - a.nodes_up);
  for (const r of regions) {
    const [cx, cy] = at.get(r.id);
    const c = svg("circle", {
      cx: cx.toFixed(2), cy: cy.toFixed(2), r: (1.6 + 1.0 * Math.sqrt(r.nodes_up)).toFixed(2),
      class: `${r.state}${r.id === state.selected ? " selected" : ""}`, "data-region": r.id, "data-state": r.state,
    });
    const t = svg("title");
    const why = r.drain ? ` (${r.drain.kind}: ${r.drain.reason})` : r.state !== "active" ? ` (${r.health?.reason || ""})` : "";
    t.textContent = `${r.id} ${r.name || ""}\n${r.state}${why}\nnodes ${r.nodes_up}/${r.nodes_total} up`;
    c.append(t);
    c.addEventListener("click", () => selectRegion(r.id));
    dots.push(c);
  }
  $("dots").replaceChildren(...dots);
}

function positions() {
  // map coordinates; regions of one metro (a few km apart) are spread around their point
  const at = new Map();
  const placed = [];
  for (const r of [...state.regions.values()].sort((a, b) => a.id.localeCompare(b.id))) {
    const [x, y] = [X(r.lon), Y(r.lat)];
    const near = placed.filter(([px, py]) => Math.hypot(px - x, py - y) < 1.5).length;
    placed.push([x, y]);
    const angle = (near * 2 * Math.PI) / 3 - Math.PI / 2;
    at.set(r.id, near ? [x + 3 * Math.cos(angle), y + 3 * Math.sin(angle)] : [x, y]);
  }
  return at;
}

function syncRegionLists() {
  const ids = [...state.regions.keys()].sort(byCloud);
  for (const id of ["region-pick", "r-src", "r-dst"]) {
    const select = $(id);
    if (select.options.length !== ids.length || [...select.options].some((o, i) => o.value !== ids[i])) {
      setOptions(select, ids);
    }
  }
  if (!state.selected && ids.length) selectRegion(ids[0], false);
  if ($("r-dst").selectedIndex === 0 && ids.length > 1) $("r-dst").selectedIndex = 1;
  const clouds = [...new Set(ids.map(cloudOf))];
  const fc = $("f-cloud");
  if (fc.options.length !== clouds.length + 1) {
    const keep = fc.value;
    fc.replaceChildren(el("option", { value: "", text: "all" }), ...clouds.map((c) => el("option", { value: c, text: c })));
    fc.value = clouds.includes(keep) ? keep : "";
  }
}

function selectRegion(id, render = true) {
  if (state.selected !== id) {
    $("drain-confirm").hidden = true;
    $("operator-msg").textContent = "";
  }
  state.selected = id;
  $("region-pick").value = id;
  if (render) {
    renderMap();
    renderRegionPanel();
  }
}

function renderRegionPanel() {
  const r = state.regions.get(state.selected);
  const box = $("region-detail");
  if (!r) {
    box.replaceChildren();
    return;
  }
  const rows = [
    ["state", el("span", { class: `state ${r.state}`, id: "region-state", text: r.state })],
    ["name", r.name || "-"], ["at", `${fmt(r.lat)}, ${fmt(r.lon)}`], ["nodes", `${r.nodes_up}/${r.nodes_total} up`],
  ];
  if (r.drain) {
    rows.push(["drain", `${r.drain.kind}: ${r.drain.reason}`], ["since", ago(r.drain.since)], ["by", r.drain.by || "-"]);
  }
  if (r.health?.reason) rows.push(["health", r.health.reason]);
  const dl = el("dl");
  for (const [k, v] of rows) dl.append(el("dt", { text: k }), el("dd", {}, v));
  box.replaceChildren(dl);
  if (state.who?.can_drain) {
    const manual = r.drain?.kind === "manual";
    $("drain-form").hidden = r.state === "drained" || !$("drain-confirm").hidden;
    $("undrain").hidden = !manual;
  }
}

// --- drain and undrain (operators) --------------------------------------------------------

async function previewDrain() {
  const region = state.selected;
  const reason = $("drain-reason").value.trim();
  const msg = $("operator-msg");
  if (!reason) {
    msg.textContent = "Give a reason: it is kept with the drain and in the events.";
    return;
  }
  try {
    const { data: p } = await api(`/v1/regions/${encodeURIComponent(region)}/drain?dry_run=true`, {
      method: "POST", body: { reason },
    });
    const parts = [el("p", { class: "summary-line", text: `Dry run for ${region}: ${p.summary} (nothing changed yet)` })];
    if (p.routes_changed.length) {
      const t = el("table", {}, el("tr", {}, el("th", { text: "from" }), el("th", { text: "to" }),
        el("th", { text: "now" }), el("th", { text: "after" })));
      for (const c of p.routes_changed.slice(0, 20)) {
        t.append(el("tr", {}, el("td", { text: c.src }), el("td", { text: c.dst }),
          el("td", { text: via(c.before) }), el("td", { text: via(c.after) })));
      }
      parts.push(el("p", { text: `routes that would move: ${p.routes_changed.length}` }), t);
    }
    if (p.placements_changed.length) {
      parts.push(el("p", { text: `placements that would go elsewhere: ` +
        p.placements_changed.map((c) => `${c.near} → ${c.after || "none"}`).join(", ") }));
    }
    $("preview").replaceChildren(...parts);
    $("drain-form").hidden = true;
    $("drain-confirm").hidden = false;
    msg.textContent = "";
  } catch (err) {
    msg.textContent = `Preview refused: ${err.message}`;
  }
}

const via = (path) => (!path ? "unreachable" : path.length <= 2 ? "direct" : `via ${path.slice(1, -1).join(", ")}`);

async function confirmDrain() {
  const region = state.selected;
  const reason = $("drain-reason").value.trim();
  try {
    await api(`/v1/regions/${encodeURIComponent(region)}/drain`, { method: "POST", body: { reason } });
    $("operator-msg").textContent = `${region} drained.`;
    $("drain-reason").value = "";
  } catch (err) {
    $("operator-msg").textContent = `Drain refused: ${err.message}`;
  }
  $("drain-confirm").hidden = true;
  await refreshStatus();
}

async function undrain() {
  const region = state.selected;
  try {
    await api(`/v1/regions/${encodeURIComponent(region)}/drain`, { method: "DELETE" });
    $("operator-msg").textContent = `${region} undrained.`;
  } catch (err) {
    $("operator-msg").textContent = `Undrain refused: ${err.message}`;
  }
  await refreshStatus();
}

// --- routes --------------------------------------------------------------------------------

async function refreshRoutes() {
  try {
    const headers = state.routesEtag ? { "If-None-Match": state.routesEtag } : {};
    const out = await api("/v1/routes", { headers });
    if (out.notModified) return;
    state.routes = out.data;
    state.routesEtag = out.res.headers.get("ETag");
    renderMap();
  } catch (err) {
    if (err.status !== 401) showBanner("conn", `Routes: ${err.message}`);
  }
}

async function explainRoute() {
  const src = $("r-src").value;
  const dst = $("r-dst").value;
  const box = $("route-out");
  try {
    const { data: r } = await api(`/v1/routes/${encodeURIComponent(src)}/${encodeURIComponent(dst)}?explain=true`);
    const w = r.weights;
    const table = el("table", {}, el("tr", {}, ...["path", "cost", "RTT ms", "usable", "note"].map((h) => el("th", { text: h }))));
    for (const c of r.candidates) {
      table.append(el("tr", { class: c.chosen ? "chosen" : "" },
        el("td", { text: (c.chosen ? "▶ " : "") + c.path.join(" → ") }), el("td", { text: fmt(c.cost) }),
        el("td", { text: fmt(c.rtt_ms) }), el("td", { text: c.usable ? "yes" : "no" }), el("td", { text: c.note || "" })));
    }
    box.replaceChildren(
      el("div", { class: "path", id: "route-path", text: r.reachable ? r.path.join(" → ") : "unreachable" }),
      el("p", { text: r.reachable ? `estimated RTT ${fmt(r.rtt_ms)} ms · cost ${fmt(r.cost)} · generation ${r.generation}` : "" }),
      el("p", { text: `why: ${r.reason}` }),
      el("p", { class: "note", text: `cost = RTT p50 + ${w.loss_weight} × loss% + ${w.jitter_weight} × jitter, ` +
        `+${w.relay_penalty_ms} ms per relay (at most ${w.max_relays}); a relay must beat the direct path by ` +
        `${Math.round(w.hysteresis_ratio * 100)}%` }),
      el("h3", { text: "candidates" }), table,
    );
    showHistory(src, dst);
  } catch (err) {
    box.replaceChildren(el("p", { class: "error", text: err.message }));
  }
}

// --- links heatmap -------------------------------------------------------------------------

async function refreshLinks() {
  try {
    const headers = state.linksEtag ? { "If-None-Match": state.linksEtag } : {};
    const out = await api("/v1/links", { headers });
    if (out.notModified) return;
    const { data } = out;
    state.links = data;
    state.linksEtag = out.res.headers.get("ETag");
    if (state.view === "matrix") renderMatrix();
  } catch (err) {
    if (err.status !== 401) showBanner("conn", `Links: ${err.message}`);
  }
}

function rttColour(ms) {
  // green (fast) to red (slow), on a log scale from 5 to 300 ms
  const t = Math.min(1, Math.max(0, Math.log(Math.max(ms, 5) / 5) / Math.log(60)));
  return `hsl(${Math.round(130 * (1 - t))}, 65%, ${Math.round(78 - 18 * t)}%)`;
}

function lossColour(pct) {
  const t = Math.min(1, pct / 10);
  return pct <= 0 ? "hsl(130, 50%, 88%)" : `hsl(300, ${Math.round(40 + 40 * t)}%, ${Math.round(85 - 35 * t)}%)`;
}

// The grid (a cell per region pair: 22,350 at 150 regions) is built when the regions shown or
// the metric change; a links update then repaints only the cells whose text, colour or
// freshness changed. A cell's title (details and age) is written with its paint and brought up
// to date when the pointer reaches it, so unchanged cells are not touched every update.
function renderMatrix() {
  if (!state.links) return;
  const started = performance.now();
  const cloud = $("f-cloud").value;
  const prefix = $("f-prefix").value.trim().toLowerCase();
  const metric = $("f-metric").value;
  state.linkByPair = new Map(state.links.links.map((l) => [`${l.src}|${l.dst}`, l]));
  const all = new Set([...state.regions.keys(), ...state.links.links.flatMap((l) => [l.src, l.dst])]);
  const ids = [...all].filter((id) => (!cloud || cloudOf(id) === cloud) && id.startsWith(prefix)).sort(byCloud);
  const shape = `${metric}|${ids.join(",")}`;
  if (state.matrixShape !== shape) buildMatrix(ids, shape);
  let shown = 0;
  for (const [key, td] of state.matrixCells) {
    const l = state.linkByPair.get(key);
    if (l) shown += 1;
    paintCell(td, l, metric);
  }
  $("matrix-note").textContent = `${ids.length} of ${all.size} regions, ${shown} measured links shown; ` +
    `hover a cell for its age and details`;
  performance.measure("matrix", { start: started });  // what a render costs (bench/bench_dashboard.py reads it)
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// One HTML string for the whole grid: the browser parses 22,350 cells several times faster than
// it takes them one createElement at a time.
function buildMatrix(ids, shape) {
  const edge = ids.map((id, i) => (i && cloudOf(ids[i - 1]) !== cloudOf(id) ? ' class="cloud-start"' : ""));
  const safe = ids.map(escapeHtml);
  const head = `<tr><th class="corner">from \\ to</th>${safe.map((id, i) => `<th${edge[i]}>${id}</th>`).join("")}</tr>`;
  const rows = safe.map((src, i) => {
    const cells = safe.map((dst, j) => {
      const cls = j && edge[j] ? "cloud-start " : "";
      return i === j ? `<td class="${cls}self"></td>` : `<td class="${cls.trim()}" data-src="${src}" data-dst="${dst}"></td>`;
    });
    return `<tr${edge[i]}><th>${src}</th>${cells.join("")}</tr>`;
  });
  const table = $("matrix");
  table.innerHTML = `<thead>${head}</thead><tbody>${rows.join("")}</tbody>`;
  const cells = new Map();
  for (const td of table.querySelectorAll("td[data-src]")) cells.set(`${td.dataset.src}|${td.dataset.dst}`, td);
  Object.assign(state, { matrixShape: shape, matrixCells: cells });
}

function paintCell(td, l, metric) {
  const was = td.dataset.sig;
  if (!l) {
    if (was === "none") return;
    td.dataset.sig = "none";
    td.classList.remove("pick", "stale");
    td.classList.add("none");
    td.style.background = "";
    td.textContent = "·";
    td.title = `${td.dataset.src} → ${td.dataset.dst}: no measurement`;
    return;
  }
  const value = metric === "loss" ? l.loss_percent : l.rtt_p50_ms;
  const text = metric === "loss" ? fmt(value) : value >= 10 ? fmt(value, 0) : fmt(value);
  const colour = metric === "loss" ? lossColour(value) : rttColour(value);
  const sig = `${text}|${colour}|${l.fresh}`;
  if (was === sig) return;
  td.dataset.sig = sig;
  if (was === undefined || was === "none") {
    td.classList.remove("none");
    td.classList.add("pick");
    td.title = cellTitle(l);  // kept current on hover (refreshCellTitle), not on every update
  }
  if (was === undefined || was === "none" || !was.endsWith(`|${l.fresh}`)) td.classList.toggle("stale", !l.fresh);
  td.textContent = text;
  td.style.background = colour;
}

function cellTitle(l) {
  // the age as of now: age_s is as of the answer's generated_at
  const age = l.age_s + Math.max(0, Date.now() - Date.parse(state.links.generated_at)) / 1000;
  return `${l.src} → ${l.dst}\nRTT p50 ${fmt(l.rtt_p50_ms)} ms, p90 ${fmt(l.rtt_p90_ms)} ms, ` +
    `jitter ${fmt(l.jitter_ms)} ms\nloss ${fmt(l.loss_percent, 2)}%, ${l.samples} samples\n` +
    `measured ${Math.round(age)}s ago${l.fresh ? "" : " (stale: not used for routing)"}`;
}

function refreshCellTitle(event) {
  const td = event.target.closest?.("td[data-src]");
  const l = td && state.linkByPair?.get(`${td.dataset.src}|${td.dataset.dst}`);
  if (l) td.title = cellTitle(l);
}

// --- link history: p50/p90 RTT and loss of one pair as an inline SVG chart ------------------

const HISTORY_RANGES = { hour: ["1h", "1m"], day: ["24h", "1m"], week: ["7d", "1h"] };

function showHistory(src, dst) {
  state.history = { src, dst, range: state.history?.range || "hour" };
  const box = $("history");
  document.getElementById(`view-${state.view}`).append(box);  // under the view it was picked in
  box.hidden = false;
  loadHistory();
}

async function loadHistory() {
  const h = state.history;
  if (!h) return;
  const [since, step] = HISTORY_RANGES[h.range];
  for (const b of document.querySelectorAll("#history .range")) b.setAttribute("aria-pressed", String(b.dataset.range === h.range));
  $("history-title").textContent = `${h.src} → ${h.dst}: last ${h.range}`;
  try {
    const q = new URLSearchParams({ since, step });
    const { data } = await api(`/v1/links/${encodeURIComponent(h.src)}/${encodeURIComponent(h.dst)}/history?${q}`);
    if (state.history !== h) return;  // another pair was picked meanwhile
    drawHistory(data);
  } catch (err) {
    $("history-chart").replaceChildren();
    $("history-note").textContent = err.message;
  }
}

function drawHistory(data) {
  const W = 640, H = 200, L = 44, R = 40, T = 10, B = 24;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "link history chart", id: "history-svg" });
  const t0 = Date.parse(data.since), t1 = Date.parse(data.until);
  const pts = data.points.map((p) => ({ ...p, t: Date.parse(p.at) + (data.step_s * 1000) / 2 }));
  const rtts = pts.flatMap((p) => [p.rtt_p50_ms, p.rtt_p90_ms]).filter((v) => v !== null);
  const top = Math.max(1, ...rtts) * 1.1;
  const lossTop = Math.max(1, ...pts.map((p) => p.loss_percent));
  const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - R);
  const y = (ms) => T + (1 - ms / top) * (H - T - B);
  const yl = (pct) => T + (1 - pct / lossTop) * (H - T - B);
  chart.append(svg("rect", { class: "frame", x: L, y: T, width: W - L - R, height: H - T - B }));
  for (let k = 0; k <= 4; k += 1) {
    const v = (top * k) / 4;
    chart.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    const label = svg("text", { class: "axis", x: L - 4, y: y(v) + 3, "text-anchor": "end" });
    label.textContent = fmt(v, v >= 10 ? 0 : 1);
    chart.append(label);
    const loss = svg("text", { class: "axis loss", x: W - R + 4, y: yl((lossTop * k) / 4) + 3 });
    loss.textContent = `${fmt((lossTop * k) / 4, lossTop >= 10 ? 0 : 1)}%`;
    chart.append(loss);
  }
  const barW = Math.max(1, ((data.step_s * 1000) / Math.max(1, t1 - t0)) * (W - L - R) - 0.5);
  for (const p of pts) {
    if (p.loss_percent > 0) {
      chart.append(svg("rect", { class: "loss", x: x(p.t) - barW / 2, y: yl(p.loss_percent), width: barW, height: H - B - yl(p.loss_percent) }));
    }
  }
  for (const [key, cls] of [["rtt_p90_ms", "p90"], ["rtt_p50_ms", "p50"]]) {
    let run = [];
    const flush = () => {
      if (run.length) chart.append(svg("polyline", { class: cls, points: run.join(" ") }));
      run = [];
    };
    for (const p of pts) {
      if (p[key] === null) flush();
      else run.push(`${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`);
    }
    flush();
  }
  for (const [when, anchor] of [[t0, "start"], [t1, "end"]]) {
    const label = svg("text", { class: "axis", x: x(when), y: H - 6, "text-anchor": anchor });
    label.textContent = new Date(when).toLocaleString();
    chart.append(label);
  }
  $("history-chart").replaceChildren(chart);
  const last = [...pts].reverse().find((p) => p.rtt_p50_ms !== null);
  $("history-note").textContent = pts.length
    ? `${pts.length} buckets of ${data.step}; latest p50 ${fmt(last?.rtt_p50_ms)} ms, p90 ${fmt(last?.rtt_p90_ms)} ms, ` +
      `loss ${fmt(pts[pts.length - 1].loss_percent, 2)}% (ms on the left, loss on the right)`
    : "no history yet for this link (the leader writes a bucket each minute)";
}

// --- events: initial page, then Server-Sent Events through fetch() -------------------------

function pathText(path) {
  if (!path) return "unreachable";
  return path.length <= 2 ? "direct" : `via ${path.slice(1, -1).join(", ")}`;
}

function eventItem(e, fresh = false) {
  const li = el("li", { class: fresh ? "new" : "", "data-id": String(e.id), "data-kind": e.kind },
    el("span", { class: "id", text: `#${e.id}` }),
    el("span", { class: "time", text: new Date(e.ts).toLocaleTimeString() }),
    el("span", { class: `kind ${e.kind}`, text: e.kind }),
    el("span", { class: "region", text: e.region || "" }),
    el("span", { class: "reason", text: e.reason }));
  const sample = e.data?.sample;
  const lines = Array.isArray(sample) ? sample.map((c) =>
    `${c.src} → ${c.dst}: ${pathText(c.before)} ⇒ ${pathText(c.after)}`) : [];
  if (lines.length && e.data.changed > lines.length) lines.push(`… and ${e.data.changed - lines.length} more`);
  li.title = [new Date(e.ts).toISOString(), ...lines].join("\n");
  return li;
}

async function loadEvents() {
  try {
    const { data } = await api("/v1/events?limit=200");
    $("events").replaceChildren(...data.slice().reverse().map((e) => eventItem(e)));
    if (data.length) state.lastEventId = data[data.length - 1].id;
  } catch (err) {
    if (err.status !== 401) showBanner("conn", `Events: ${err.message}`);
  }
}

function addEvent(e) {
  if (e.id <= state.lastEventId) return;
  state.lastEventId = e.id;
  const list = $("events");
  list.prepend(eventItem(e, true));
  while (list.children.length > 500) list.lastChild.remove();
  if (e.region || ["freeze", "unfreeze"].includes(e.kind)) refreshStatus();
}

function setLive(mode) {
  const live = $("live");
  live.className = `live ${mode}`;
  live.textContent = { on: "events: live", retry: "events: reconnecting", off: "events: off" }[mode];
}

async function startStream() {
  const abort = new AbortController();
  state.streamAbort = abort;
  let delay = 1000;
  while (!abort.signal.aborted) {
    try {
      const headers = { Accept: "text/event-stream", Authorization: `Bearer ${state.token}` };
      if (state.lastEventId) headers["Last-Event-ID"] = String(state.lastEventId);
      const res = await fetch("/v1/events/stream", { headers, signal: abort.signal, cache: "no-store" });
      if (res.status === 401) {
        signOut(`Signed out: ${await problemDetail(res)}`);
        return;
      }
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      setLive("on");
      delay = 1000;
      await readSse(res.body, (id, data, retry) => {
        if (retry) delay = retry;
        if (data) addEvent(JSON.parse(data));
      });
    } catch (err) {
      if (abort.signal.aborted) return;
    }
    setLive("retry");
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

async function readSse(stream, onEvent) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let id = null;
      let retry = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "id") id = val;
        else if (field === "data") data.push(val);
        else if (field === "retry" && /^\d+$/.test(val)) retry = Number(val);
      }
      onEvent(id, data.join("\n"), retry);
    }
  }
}

// --- wiring --------------------------------------------------------------------------------

function showView(view) {
  state.view = view;
  for (const b of document.querySelectorAll("nav .tab")) b.setAttribute("aria-selected", String(b.dataset.view === view));
  for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== `view-${view}`;
  if (view === "matrix") {
    if (state.links) renderMatrix();
    refreshLinks();
  }
}

function debounce(fn, ms) {
  let t;
  return () => {
    clearTimeout(t);
    t = setTimeout(fn, ms);
  };
}

function wire() {
  drawGraticule();
  $("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim();
    $("signin-error").textContent = "";
    if (!token) return;
    $("signin-button").disabled = true;
    try {
      await signIn(token);
    } catch (err) {
      $("signin-error").textContent = signInMessage(err);
    } finally {
      $("signin-button").disabled = false;
    }
  });
  $("signout").addEventListener("click", () => signOut());
  for (const b of document.querySelectorAll("nav .tab")) b.addEventListener("click", () => showView(b.dataset.view));
  $("region-pick").addEventListener("change", (ev) => selectRegion(ev.target.value));
  $("drain-preview").addEventListener("click", previewDrain);
  $("drain-go").addEventListener("click", confirmDrain);
  $("drain-cancel").addEventListener("click", () => {
    $("drain-confirm").hidden = true;
    renderRegionPanel();
  });
  $("undrain").addEventListener("click", undrain);
  $("r-go").addEventListener("click", explainRoute);
  $("f-cloud").addEventListener("change", renderMatrix);
  $("f-metric").addEventListener("change", renderMatrix);
  $("matrix").addEventListener("mouseover", refreshCellTitle);
  $("f-prefix").addEventListener("input", debounce(renderMatrix, 150));
  $("matrix").addEventListener("click", (ev) => {
    const td = ev.target.closest("td.pick");
    if (td) showHistory(td.dataset.src, td.dataset.dst);
  });
  for (const b of document.querySelectorAll("#history .range")) {
    b.addEventListener("click", () => {
      if (!state.history) return;
      state.history.range = b.dataset.range;
      loadHistory();
    });
  }
  $("history-close").addEventListener("click", () => {
    $("history").hidden = true;
    state.history = null;
  });
  document.addEventListener("visibilitychange", () => visible() && state.who && refreshStatus());
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    signIn(saved).catch((err) => signOut(signInMessage(err)));
  }
}

wire();
