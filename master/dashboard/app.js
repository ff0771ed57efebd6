// The Strata dashboard: plain JavaScript over the master's REST API, no build step and
// nothing fetched from elsewhere. Hash routes: #/ (overview), #/tasks?state=&region=&kind=
// (tasks), #/tasks/ID (one task, with the DAG around it), #/regions. Kept live by
// /v1/events (Server-Sent Events); while that stream cannot be had, by polling.
// A master with API tokens answers 401: the page then asks for one (once, however many
// calls were refused), keeps it in sessionStorage (this tab, until closed) and sends it
// as Authorization: Bearer on every call. EventSource cannot send a header: with a token
// the stream is read with fetch(), which resumes after Last-Event-ID as EventSource does.
// The token never goes in a URL.

const STATES = ["waiting", "pending", "dispatched", "running", "succeeded", "failed", "cancelled"];
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const KINDS = ["shell", "http", "python", "noop", "sleep"];
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const PAGE = 50;
const POLL_MS = 3000;          // while the event stream is unavailable
const REFRESH_MS = 10000;      // with it: ages and rates move with time alone
const EVENTS_RETRY_MS = 30000; // how soon a refused stream is tried again
const STREAM_RETRY_MS = 2000;  // how soon a stream that ended is taken up again
const TOKEN_KEY = "strata.token";
const THROTTLE_MS = 250;       // events are coalesced into one refresh at most this often
const DAG_MAX = 200;           // tasks of a task's graph drawn at most, the nearest ones
const LINKS_MAX = 12;          // parents or dependents listed by id among a task's fields

// ---- small helpers ------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const svgNS = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(svgNS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") el.textContent = value;
    else el.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) if (child) el.append(child);
  return el;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// ---- the API token ------------------------------------------------------------------

function storedToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || null; } catch { return null; }
}

let token = storedToken();
let asking = null; // the one question pending: a promise of the token given

function authorization() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// A call was refused (401) with `sent` (null: none): ask for a token, once for every
// call refused meanwhile; resolves with the token given.
function askToken(sent) {
  if (token !== sent) return Promise.resolve(token); // given meanwhile: try that one
  if (!asking) {
    asking = new Promise((resolve) => {
      const box = document.getElementById("signin");
      const form = document.getElementById("signin-form");
      const input = document.getElementById("signin-token");
      const why = document.getElementById("signin-why");
      box.toggleAttribute("data-refused", sent !== null);
      why.textContent = sent === null ? "This Strata needs an API token."
        : "That API token was not accepted: it is wrong, or it was revoked.";
      if (sent !== null) forgetToken();
      box.hidden = false;
      input.value = "";
      input.focus();
      form.onsubmit = (e) => {
        e.preventDefault();
        const given = input.value.trim();
        if (!given) return;
        token = given;
        try { sessionStorage.setItem(TOKEN_KEY, given); } catch { /* kept in memory only */ }
        box.hidden = true;
        form.onsubmit = null;
        asking = null;
        resolve(given);
        tokenGiven();
      };
    });
  }
  return asking;
}

function forgetToken() {
  token = null;
  try { sessionStorage.removeItem(TOKEN_KEY); } catch { /* not kept */ }
}

async function api(path, options = {}) {
  let response;
  for (;;) {
    const sent = token;
    response = await fetch(path, {
      ...options,
      headers: { Accept: "application/json", ...authorization(), ...(options.headers || {}) },
    });
    if (response.status !== 401) break;
    // Nothing was done: the call is made again once there is a token to try.
    await askToken(sent);
  }
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    const err = body && body.error ? body.error : {};
    throw new ApiError(response.status, err.code || "error",
      err.message || `HTTP ${response.status}`);
  }
  return body;
}

const dash = "—";
const isNum = (v) => typeof v === "number" && Number.isFinite(v);

function fmtDuration(seconds) {
  if (!isNum(seconds)) return dash;
  const abs = Math.abs(seconds);
  if (abs < 1) return `${Math.round(seconds * 1000)} ms`;
  if (abs < 60) return `${seconds.toFixed(abs < 10 ? 2 : 1)} s`;
  if (abs < 3600) return `${Math.floor(abs / 60)}m ${Math.round(abs % 60)}s`;
  if (abs < 86400) return `${Math.floor(abs / 3600)}h ${Math.round((abs % 3600) / 60)}m`;
  return `${Math.floor(abs / 86400)}d ${Math.round((abs % 86400) / 3600)}h`;
}

function fmtRate(perSecond) {
  if (!isNum(perSecond)) return dash;
  if (perSecond === 0) return "0";
  if (perSecond < 0.1) return `${(perSecond * 60).toFixed(1)}/min`;
  return perSecond < 10 ? perSecond.toFixed(2) : perSecond.toFixed(0);
}

const ms = (text) => (text ? Date.parse(text) : NaN);

function ago(text) {
  const t = ms(text);
  if (Number.isNaN(t)) return dash;
  const d = (Date.now() - t) / 1000;
  if (d < -1) return `in ${fmtDuration(-d)}`;
  if (d < 1) return "just now";
  return `${fmtDuration(d).replace(/\.\d+ s$/, " s")} ago`;
}

// A relative time that the ticker keeps current.
function when(text) {
  if (!text) return h("span", { class: "muted", text: dash });
  return h("time", { datetime: text, title: new Date(text).toLocaleString(), class: "ago",
    text: ago(text) });
}

function between(from, to) {
  const a = ms(from), b = ms(to);
  return Number.isNaN(a) || Number.isNaN(b) ? null : (b - a) / 1000;
}

function badge(state, extra = "") {
  return h("span", { class: `badge b-${state || "none"} ${extra}`, text: state || dash });
}

function shortId(id) { return id ? id.slice(0, 8) : dash; }

function payloadSummary(task) {
  const p = task.payload || {};
  switch (task.kind) {
    case "shell": return p.command;
    case "http": return `${p.method || "GET"} ${p.url}`;
    case "python": return p.handler;
    case "sleep": return `${p.seconds} s`;
    default: return "";
  }
}

let toastTimer = null;
function toast(message, kind = "info") {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = `toast t-${kind}`;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
}

function errorBox(err) {
  return h("div", { class: "error-box", role: "alert" },
    h("strong", { text: err.status ? `${err.status} ${err.code}` : "Error" }), " ",
    err.message || String(err));
}

// ---- routing ------------------------------------------------------------------------

function route() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query] = raw.split("?");
  const parts = path.split("/").filter(Boolean);
  const params = new URLSearchParams(query || "");
  if (parts[0] === "tasks" && parts[1]) return { name: "task", tab: "tasks", id: parts[1] };
  if (parts[0] === "tasks") return { name: "tasks", tab: "tasks", params };
  if (parts[0] === "regions") return { name: "regions", tab: "regions" };
  return { name: "overview", tab: "overview" };
}

// ---- views --------------------------------------------------------------------------
// A view builds its skeleton in mount() and fills it in refresh(), which live updates
// call again (at most one at a time; a call that comes meanwhile runs once it is done).

class View {
  constructor(root, r) {
    this.root = root;
    this.route = r;
    this.alive = true;
    this.running = null;
    this.again = false;
  }

  async refresh() {
    if (this.running) { this.again = true; return this.running; }
    this.running = (async () => {
      do {
        this.again = false;
        try {
          await this.load();
        } catch (err) {
          if (this.alive) this.failed(err);
        }
      } while (this.again && this.alive);
      this.running = null;
    })();
    return this.running;
  }

  failed(err) {
    const slot = this.root.querySelector(".view-error");
    if (slot) slot.replaceChildren(errorBox(err));
  }

  clearError() {
    const slot = this.root.querySelector(".view-error");
    if (slot) slot.replaceChildren();
  }

  wants(/* event */) { return true; }
}

// Overview: counts by state, recent throughput and latency, regions, newest tasks.
class OverviewView extends View {
  mount() {
    this.root.replaceChildren(
      h("div", { class: "view-error" }),
      h("section", { class: "panel" },
        h("h2", { text: "Tasks by state" }),
        this.counts = h("div", { class: "cards states" })),
      h("section", { class: "panel" },
        h("h2", {}, "Recent activity ", this.window = h("span", { class: "muted" })),
        this.metrics = h("div", { class: "cards metrics" }),
        this.chart = h("div", { class: "chart" })),
      h("div", { class: "split" },
        h("section", { class: "panel" },
          h("h2", {}, h("a", { href: "#/regions", text: "Regions" })),
          this.regions = h("div")),
        h("section", { class: "panel" },
          h("h2", {}, h("a", { href: "#/tasks", text: "Newest tasks" })),
          this.newest = h("div"))),
    );
  }

  async load() {
    const [stats, regions, tasks] = await Promise.all([
      api("/v1/stats"), api("/v1/regions"), api("/v1/tasks?order=desc&limit=8"),
    ]);
    if (!this.alive) return;
    this.clearError();
    const counts = stats.counts || {};
    this.counts.replaceChildren(...STATES.map((st) =>
      h("a", { class: `card state-card s-${st}`, href: `#/tasks?state=${st}`,
        dataset: { stateCount: st } },
        h("span", { class: "card-value", text: (counts[st] ?? 0).toLocaleString() }),
        h("span", { class: "card-label" }, h("span", { class: `dot d-${st}` }), st))));

    const recent = stats.recent || null;
    const windowS = recent && isNum(recent.window_s) ? recent.window_s : null;
    this.window.textContent = !windowS ? ""
      : windowS % 60 === 0 ? `(last ${windowS / 60} min)` : `(last ${fmtDuration(windowS)})`;
    const metric = (label, value, hint, key) => h("div", { class: "card metric",
      dataset: { metric: key }, title: hint },
      h("span", { class: "card-value", text: value }), h("span", { class: "card-label", text: label }));
    this.metrics.replaceChildren(
      metric("started / s", fmtRate(recent?.started_per_s), "tasks started per second", "started"),
      metric("finished / s", fmtRate(recent?.finished_per_s), "tasks finished per second", "finished"),
      metric("p50 due → started", fmtDuration(recent?.due_to_started_p50_s),
        "median time from a task's run_at to its start", "p50"),
      metric("p99 due → started", fmtDuration(recent?.due_to_started_p99_s),
        "99th percentile of the time from a task's run_at to its start", "p99"),
      metric("oldest due task", fmtDuration(stats.oldest_due_s),
        "how long the oldest task that is due has been waiting", "oldest"),
      metric("stale results", (stats.stale_results ?? 0).toLocaleString(),
        "results that came for an attempt the master no longer owned (dropped)", "stale"),
    );
    this.chart.replaceChildren(seriesChart(minutes(recent?.series, windowS)));
    this.regions.replaceChildren(regionsTable(regions.regions || [], true));
    this.newest.replaceChildren(tasksTable(tasks.tasks || [], { compact: true }));
  }
}

// One point per minute of the window, the latest last: minutes the series leaves out
// (nothing happened in them) are zeros.
function minutes(series, windowS) {
  if (!Array.isArray(series) || series.length === 0) return [];
  const MIN = 60000;
  const byMinute = new Map(series.map((p) => [Math.floor(ms(p.at) / MIN), p]));
  const last = Math.max(Math.floor(Date.now() / MIN), ...byMinute.keys());
  const n = Math.max(1, Math.min(120, Math.round((windowS || 60 * series.length) / 60)));
  const out = [];
  for (let m = last - n + 1; m <= last; m++) {
    out.push(byMinute.get(m) || { at: new Date(m * MIN).toISOString(), started: 0, finished: 0,
      failed: 0, p50_s: null, p99_s: null });
  }
  return out;
}

function seriesChart(series) {
  if (series.length === 0) {
    return h("p", { class: "muted empty", text: "No per-minute series yet." });
  }
  const W = 1100, H = 160, padL = 34, padB = 22, padT = 8;
  const top = Math.max(1, ...series.map((p) => Math.max(p.started || 0, p.finished || 0)));
  const slot = (W - padL) / series.length;
  const bw = Math.max(3, Math.min(28, slot / 2 - 3));
  const y = (v) => padT + (H - padT - padB) * (1 - v / top);
  const bars = [];
  series.forEach((p, i) => {
    const x = padL + i * slot + slot / 2;
    const started = p.started || 0, finished = p.finished || 0, failed = p.failed || 0;
    const label = new Date(p.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const tip = `${label}: ${started} started, ${finished} finished (${failed} failed), ` +
      `p50 ${fmtDuration(p.p50_s)}, p99 ${fmtDuration(p.p99_s)}`;
    bars.push(s("g", {}, s("title", { text: tip }),
      s("rect", { x: x - bw - 1, y: y(started), width: bw, height: y(0) - y(started),
        class: "bar-started", rx: 1.5 }),
      s("rect", { x: x + 1, y: y(finished), width: bw, height: y(0) - y(finished),
        class: "bar-finished", rx: 1.5 }),
      failed ? s("rect", { x: x + 1, y: y(failed), width: bw, height: y(0) - y(failed),
        class: "bar-failed", rx: 1.5 }) : null,
      (series.length <= 12 || i % Math.ceil(series.length / 12) === 0)
        ? s("text", { x, y: H - 6, class: "axis", "text-anchor": "middle", text: label }) : null));
  });
  const grid = [0, 0.5, 1].map((f) => s("g", {},
    s("line", { x1: padL, x2: W, y1: y(top * f), y2: y(top * f), class: "grid" }),
    s("text", { x: padL - 6, y: y(top * f) + 4, class: "axis", "text-anchor": "end",
      text: String(Math.round(top * f)) })));
  const latest = series[series.length - 1];
  return h("div", {},
    s("svg", { viewBox: `0 0 ${W} ${H}`, class: "series", role: "img",
      "aria-label": "tasks started and finished per minute" }, grid, bars),
    h("div", { class: "legend" },
      h("span", {}, h("i", { class: "sw sw-started" }), "started"),
      h("span", {}, h("i", { class: "sw sw-finished" }), "finished"),
      h("span", {}, h("i", { class: "sw sw-failed" }), "failed"),
      h("span", { class: "muted" },
        `this minute: p50 ${fmtDuration(latest.p50_s)}, p99 ${fmtDuration(latest.p99_s)}`)));
}

function tasksTable(tasks, { compact = false } = {}) {
  if (tasks.length === 0) return h("p", { class: "muted empty", text: "No tasks." });
  const head = compact
    ? ["ID", "Kind", "Payload", "State", "Created"]
    : ["ID", "Kind", "Payload", "State", "Region", "Worker", "Attempt", "Created", "Took"];
  return h("table", { class: "grid-table tasks-table" },
    h("thead", {}, h("tr", {}, head.map((c) => h("th", { text: c })))),
    h("tbody", {}, tasks.map((t) => taskRow(t, compact))));
}

function taskRow(t, compact) {
  const took = between(t.started_at, t.finished_at);
  const cells = [
    h("td", { class: "mono" }, h("a", { href: `#/tasks/${t.id}`, title: t.id, class: "task-link",
      text: shortId(t.id) })),
    h("td", {}, h("span", { class: "kind", text: t.kind })),
    h("td", { class: "mono payload-cell", title: payloadSummary(t) || "", text: payloadSummary(t) }),
    h("td", {}, badge(t.state)),
  ];
  if (!compact) {
    cells.push(
      h("td", { text: t.region || dash }),
      h("td", { class: "mono", text: t.worker_id || dash }),
      h("td", { class: "num", text: `${t.attempt}/${t.max_attempts}` }),
    );
  }
  cells.push(h("td", {}, when(t.created_at)));
  if (!compact) cells.push(h("td", { class: "num", text: took === null ? dash : fmtDuration(took) }));
  return h("tr", { dataset: { taskId: t.id, state: t.state } }, cells);
}

// Tasks: filters kept in the hash, one page of tasks and more on demand.
class TasksView extends View {
  mount() {
    const p = this.route.params;
    this.filters = { state: p.get("state") || "", region: p.get("region") || "",
      kind: p.get("kind") || "", q: p.get("q") || "" };
    this.extra = [];
    this.cursor = null;
    const select = (name, label, values) => h("label", { class: "field" },
      h("span", { text: label }),
      h("select", { name, "aria-label": label, onchange: (e) => this.set(name, e.target.value) },
        h("option", { value: "", text: "all" }),
        values.map((v) => h("option", { value: v, text: v, selected: v === this.filters[name] }))));
    this.regionSelect = select("region", "Region", this.filters.region ? [this.filters.region] : []);
    this.root.replaceChildren(
      h("div", { class: "view-error" }),
      h("section", { class: "panel" },
        h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); this.search(); } },
          select("state", "State", STATES),
          this.regionSelect,
          select("kind", "Kind", KINDS),
          h("label", { class: "field grow" }, h("span", { text: "Search by id" }),
            this.searchBox = h("input", { type: "search", name: "q", value: this.filters.q,
              placeholder: "task id or its first characters", "aria-label": "Search by id",
              autocomplete: "off", spellcheck: "false",
              oninput: (e) => { this.filters.q = e.target.value.trim(); this.syncHash(); this.refresh(); } })),
          h("button", { type: "submit", class: "btn", text: "Open" })),
        this.summary = h("p", { class: "muted small" }),
        this.table = h("div"),
        this.more = h("div", { class: "more" })),
    );
  }

  set(name, value) {
    this.filters[name] = value;
    this.extra = [];
    this.syncHash();
    this.refresh();
  }

  syncHash() {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(this.filters)) if (v) q.set(k, v);
    const text = q.toString();
    history.replaceState(null, "", `#/tasks${text ? `?${text}` : ""}`);
  }

  search() {
    const q = this.filters.q;
    if (UUID_RE.test(q)) location.hash = `#/tasks/${q.toLowerCase()}`;
  }

  query(limit, cursor) {
    const q = new URLSearchParams({ order: "desc", limit: String(limit) });
    for (const k of ["state", "region", "kind"]) if (this.filters[k]) q.set(k, this.filters[k]);
    if (cursor) q.set("cursor", cursor);
    return `/v1/tasks?${q}`;
  }

  async load() {
    const q = this.filters.q.toLowerCase();
    const [page, regions, found] = await Promise.all([
      api(this.query(PAGE)),
      api("/v1/regions").catch(() => null),
      UUID_RE.test(q) ? api(`/v1/tasks/${q}`).catch(() => null) : Promise.resolve(null),
    ]);
    if (!this.alive) return;
    this.clearError();
    if (regions) this.fillRegions(regions.regions.map((r) => r.name));
    let tasks = page.tasks;
    const seen = new Set(tasks.map((t) => t.id));
    for (const t of this.extra) if (!seen.has(t.id)) { tasks.push(t); seen.add(t.id); }
    this.cursor = this.extra.length ? this.cursor : page.next_cursor;
    if (q) {
      tasks = found ? [found] : tasks.filter((t) => t.id.includes(q));
    }
    this.summary.textContent = q
      ? `${tasks.length} task${tasks.length === 1 ? "" : "s"} matching “${q}”` +
        (found ? "" : " among those loaded")
      : `${tasks.length} task${tasks.length === 1 ? "" : "s"} shown, newest first`;
    this.table.replaceChildren(tasksTable(tasks));
    this.more.replaceChildren(this.cursor && !q
      ? h("button", { class: "btn", type: "button", text: "Load more",
        onclick: () => this.loadMore() })
      : "");
  }

  async loadMore() {
    try {
      const page = await api(this.query(PAGE, this.cursor));
      this.extra.push(...page.tasks);
      this.cursor = page.next_cursor;
      await this.refresh();
    } catch (err) { this.failed(err); }
  }

  fillRegions(names) {
    const sel = this.regionSelect.querySelector("select");
    const want = ["", ...new Set([...names, this.filters.region].filter(Boolean))].sort();
    const have = [...sel.options].map((o) => o.value);
    if (want.join("\n") === have.join("\n")) return;
    sel.replaceChildren(...want.map((v) => h("option", { value: v, text: v || "all",
      selected: v === this.filters.region })));
  }
}

// One task: its fields, the DAG around it, payload, attempts as a timeline, result,
// Cancel and Retry. Follows the events of every task its graph shows.
class TaskView extends View {
  mount() {
    this.graph = null;
    this.graphIds = new Set();
    this.root.replaceChildren(
      h("div", { class: "view-error" }),
      this.body = h("div", {}, h("p", { class: "muted", text: "Loading…" })),
    );
  }

  wants(event) { return !event || event.id === this.route.id || this.graphIds.has(event.id); }

  async load() {
    const id = this.route.id;
    const path = `/v1/tasks/${encodeURIComponent(id)}`;
    let task, attempts, graph;
    try {
      [task, attempts, graph] = await Promise.all([
        api(path),
        api(`${path}/attempts`),
        // No graph to be had (a master without the route): no section. Another failure
        // keeps the graph drawn last.
        api(`${path}/graph?limit=${DAG_MAX}`).catch((err) =>
          (err.status === 404 || err.status === 400 ? null : this.graph)),
      ]);
    } catch (err) {
      if (err.status === 404 || err.status === 400) {
        this.body.replaceChildren(h("section", { class: "panel" },
          h("h1", {}, "No such task"), h("p", { class: "muted mono", text: id }), errorBox(err)));
        return;
      }
      throw err;
    }
    if (!this.alive) return;
    this.clearError();
    this.task = task;
    this.graph = graph;
    this.graphIds = new Set(graph ? graph.nodes.map((n) => n.id) : []);
    // A redraw keeps where the graph was scrolled to; the first shows the task itself.
    const before = this.body.querySelector(".dag-wrap");
    const scroll = before ? [before.scrollLeft, before.scrollTop] : null;
    this.body.replaceChildren(this.render(task, attempts.attempts || [], graph));
    const wrap = this.body.querySelector(".dag-wrap");
    if (wrap && scroll) [wrap.scrollLeft, wrap.scrollTop] = scroll;
    else if (wrap) {
      const box = wrap.querySelector(".dag-node.root rect");
      if (box) {
        wrap.scrollLeft = Number(box.getAttribute("x")) - wrap.clientWidth / 2;
        wrap.scrollTop = Number(box.getAttribute("y")) - wrap.clientHeight / 2;
      }
    }
  }

  render(t, attempts, graph) {
    const r = t.result || {};
    const terminal = TERMINAL.has(t.state);
    const retryable = t.state === "failed" || t.state === "cancelled";
    const field = (label, value) => [h("dt", { text: label }), h("dd", {}, value ?? dash)];
    return h("div", { class: "task-page", dataset: { taskId: t.id, state: t.state } },
      h("section", { class: "panel task-head" },
        h("div", { class: "title-row" },
          h("div", {},
            h("div", { class: "crumbs" }, h("a", { href: "#/tasks", text: "Tasks" }), " / ",
              h("span", { class: "kind", text: t.kind })),
            h("h1", { class: "mono task-id", text: t.id })),
          h("div", { class: "actions" },
            badge(t.state, "big"),
            h("button", { class: "btn danger", type: "button", disabled: terminal,
              title: terminal ? `the task is ${t.state}` : "stop this task",
              onclick: (e) => this.act(e.currentTarget, "cancel"), text: "Cancel" }),
            h("button", { class: "btn", type: "button", disabled: !retryable,
              title: retryable ? "run it again as a new task" : "only a failed or cancelled task can be retried",
              onclick: (e) => this.act(e.currentTarget, "retry"), text: "Retry" }))),
        t.waiting_for ? h("p", { class: "waiting" }, "Waiting for ", t.waiting_for, ".") : null,
        h("dl", { class: "fields" },
          field("Priority", String(t.priority)),
          field("Attempt", `${t.attempt} of ${t.max_attempts}`),
          field("Timeout", t.timeout_s ? fmtDuration(t.timeout_s) : dash),
          field("Region", t.region || dash),
          field("Pinned to", t.pinned_region || "any region"),
          field("Worker", t.worker_id ? h("span", { class: "mono", text: t.worker_id }) : dash),
          field("Run at", when(t.run_at)),
          field("Created", when(t.created_at)),
          field("Picked", when(t.picked_at)),
          field("Started", when(t.started_at)),
          field("Finished", when(t.finished_at)),
          field("Ran for", t.started_at ? fmtDuration(between(t.started_at, t.finished_at || new Date().toISOString())) : dash),
          t.retry_of ? field("Retry of", h("a", { class: "mono", href: `#/tasks/${t.retry_of}`,
            text: shortId(t.retry_of) })) : null,
          t.idempotency_key ? field("Idempotency key", h("span", { class: "mono", text: t.idempotency_key })) : null,
          t.concurrency_key ? field("Concurrency key", h("span", { class: "mono concurrency-key",
            text: t.concurrency_key })) : null,
          t.depends_on && t.depends_on.length
            ? [field("Depends on", taskLinks(t.depends_on, "depends-on")),
              field("If a parent fails", t.on_upstream_failure === "run" ? "run anyway" : "cancel")]
            : null,
          t.dependents && t.dependents.length
            ? field("Dependents", taskLinks(t.dependents, "dependents", t.dependents.length >= 1000))
            : null)),
      graph && graph.nodes.length > 1 ? dagPanel(graph, t.id) : null,
      h("div", { class: "split" },
        h("section", { class: "panel" }, h("h2", { text: "Payload" }),
          h("pre", { class: "code payload", text: JSON.stringify(t.payload, null, 2) })),
        h("section", { class: "panel" }, h("h2", { text: "Attempts" }), timeline(t, attempts))),
      h("section", { class: "panel result" },
        h("h2", {}, "Result ",
          r.exit_code !== null && r.exit_code !== undefined
            ? h("span", { class: `exit ${r.exit_code === 0 ? "ok" : "bad"}`, text: `exit ${r.exit_code}` }) : null),
        r.error ? h("div", { class: "error-box task-error", text: r.error }) : null,
        h("h3", {}, "Output", r.output_truncated ? h("span", { class: "muted small", text: " (its tail)" }) : null),
        r.output ? h("pre", { class: "code output", text: r.output })
          : h("p", { class: "muted output-empty", text: terminal ? "No output." : "No output yet." }),
        r.stderr ? [h("h3", {}, "Stderr", r.stderr_truncated ? h("span", { class: "muted small", text: " (its tail)" }) : null),
          h("pre", { class: "code stderr", text: r.stderr })] : null,
        r.killed_processes ? h("p", { class: "muted",
          text: `${r.killed_processes} process(es) it left running were killed.` }) : null),
    );
  }

  async act(button, action) {
    button.disabled = true;
    try {
      const out = await api(`/v1/tasks/${this.route.id}/${action}`, { method: "POST" });
      if (action === "retry") {
        toast(`Retried as ${shortId(out.id)}`, "ok");
        location.hash = `#/tasks/${out.id}`;
        return;
      }
      toast("Cancelled", "ok");
    } catch (err) {
      toast(err.message, "bad");
    }
    await this.refresh();
  }
}

// Tasks named by their ids' first characters, each a link to its page.
function taskLinks(ids, name, capped = false) {
  const shown = ids.slice(0, LINKS_MAX);
  const rest = ids.length - shown.length;
  return h("span", { class: `task-links ${name}` },
    shown.map((id) => h("a", { class: "mono", href: `#/tasks/${id}`, title: id, text: shortId(id) })),
    rest > 0 ? h("span", { class: "muted small", text: `and ${rest}${capped ? "+" : ""} more` }) : null);
}

// ---- the DAG around a task ----------------------------------------------------------

const DAG = { w: 176, h: 42, colGap: 64, rowGap: 12, pad: 10, chars: 22 };

// A layered drawing: each task in the column of its longest path from the graph's
// sources (parents left of their children; a source just left of its nearest child),
// each column ordered by a few sweeps that sort its tasks by the mean position of their
// neighbours in the columns before (or after), so fewer edges cross; columns centred.
function layoutDag(nodes, edges) {
  const ids = new Set(nodes.map((n) => n.id));
  const parents = new Map(nodes.map((n) => [n.id, []]));
  const children = new Map(nodes.map((n) => [n.id, []]));
  const kept = [];
  for (const e of edges) {
    if (!ids.has(e.parent) || !ids.has(e.child) || e.parent === e.child) continue;
    parents.get(e.child).push(e.parent);
    children.get(e.parent).push(e.child);
    kept.push(e);
  }
  const layer = new Map();
  const unmet = new Map(nodes.map((n) => [n.id, parents.get(n.id).length]));
  const queue = nodes.filter((n) => unmet.get(n.id) === 0).map((n) => n.id);
  for (const id of queue) layer.set(id, 0);
  for (let i = 0; i < queue.length; i++) {
    const id = queue[i];
    for (const c of children.get(id)) {
      layer.set(c, Math.max(layer.get(c) ?? 0, layer.get(id) + 1));
      unmet.set(c, unmet.get(c) - 1);
      if (unmet.get(c) === 0) queue.push(c);
    }
  }
  // On a cycle (the API makes none): after the rest.
  const last = Math.max(0, ...queue.map((id) => layer.get(id)));
  const ordered = new Set(queue);
  for (const n of nodes) if (!ordered.has(n.id)) layer.set(n.id, last + 1);
  for (const id of queue) {
    const below = children.get(id).map((c) => layer.get(c));
    if (parents.get(id).length === 0 && below.length) layer.set(id, Math.max(0, Math.min(...below) - 1));
  }
  const byLayer = new Map();
  for (const n of nodes) {
    const l = layer.get(n.id);
    if (!byLayer.has(l)) byLayer.set(l, []);
    byLayer.get(l).push(n.id);
  }
  const layers = [...byLayer.keys()].sort((a, b) => a - b).map((l) => byLayer.get(l));

  // A task's position: its place in its column, measured from the column's middle.
  const pos = new Map();
  const place = (col) => col.forEach((id, i) => pos.set(id, i - (col.length - 1) / 2));
  layers.forEach(place);
  const mean = (list, own) => (list.length
    ? list.reduce((sum, id) => sum + pos.get(id), 0) / list.length : own);
  for (let sweep = 0; sweep < 6; sweep++) {
    const down = sweep % 2 === 0;
    for (const col of down ? layers.slice(1) : layers.slice(0, -1).reverse()) {
      const key = new Map(col.map((id) => [id, mean((down ? parents : children).get(id), pos.get(id))]));
      col.sort((a, b) => key.get(a) - key.get(b));
      place(col);
    }
  }

  const tallest = Math.max(...layers.map((col) => col.length));
  const colHeight = (k) => k * DAG.h + (k - 1) * DAG.rowGap;
  const at = new Map();
  layers.forEach((col, l) => {
    const top = DAG.pad + (colHeight(tallest) - colHeight(col.length)) / 2;
    col.forEach((id, i) => at.set(id, {
      x: DAG.pad + l * (DAG.w + DAG.colGap), y: top + i * (DAG.h + DAG.rowGap) }));
  });
  return {
    at, edges: kept,
    width: 2 * DAG.pad + layers.length * DAG.w + (layers.length - 1) * DAG.colGap,
    height: 2 * DAG.pad + colHeight(tallest),
  };
}

function dagSvg(graph, rootId) {
  const nodes = graph.nodes.slice(0, DAG_MAX);
  const { at, edges, width, height } = layoutDag(nodes, graph.edges || []);
  const arrow = (id) => s("marker", { id, viewBox: "0 0 10 10", refX: 9, refY: 5,
    markerWidth: 7, markerHeight: 7, markerUnits: "userSpaceOnUse", orient: "auto" },
  s("path", { d: "M0,1 L10,5 L0,9 z", class: "dag-arrow" }));
  const lines = edges.map((e) => {
    const p = at.get(e.parent), c = at.get(e.child);
    const x1 = p.x + DAG.w, y1 = p.y + DAG.h / 2, x2 = c.x - 1, y2 = c.y + DAG.h / 2;
    const dx = Math.max(24, Math.abs(x2 - x1) / 2);
    const near = e.parent === rootId || e.child === rootId;
    return s("path", { class: `dag-edge${near ? " near" : ""}`, "data-parent": e.parent,
      "data-child": e.child, "marker-end": `url(#dag-arrow${near ? "-near" : ""})`,
      d: `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}` });
  });
  const boxes = nodes.map((n) => {
    const { x, y } = at.get(n.id);
    const root = n.id === rootId;
    const label = n.label || n.kind;
    const short = label.length > DAG.chars ? `${label.slice(0, DAG.chars - 1)}…` : label;
    return s("a", { href: `#/tasks/${n.id}`, class: `dag-node n-${n.state}${root ? " root" : ""}`,
      "data-task-id": n.id, "data-state": n.state,
      "aria-label": `${root ? "this task" : `task ${shortId(n.id)}`}: ${label}, ${n.state}` },
    s("title", { text: `${label}\n${n.kind} · ${n.state} · priority ${n.priority}\n${n.id}` }),
    s("rect", { x, y, width: DAG.w, height: DAG.h, rx: 7 }),
    s("text", { x: x + 10, y: y + 17, class: "dag-label", text: short }),
    s("text", { x: x + 10, y: y + 33, class: "dag-state", text: `${n.state} · ${n.kind}` }));
  });
  return s("svg", { class: "dag", width, height, viewBox: `0 0 ${width} ${height}`,
    role: "group", "aria-label": "the tasks this one depends on and those that depend on it" },
  s("defs", {}, arrow("dag-arrow"), arrow("dag-arrow-near")),
  s("g", { class: "dag-edges" }, lines), s("g", { class: "dag-nodes" }, boxes));
}

function dagPanel(graph, rootId) {
  const shown = Math.min(graph.nodes.length, DAG_MAX);
  const more = graph.truncated || graph.nodes.length > DAG_MAX;
  return h("section", { class: "panel deps" },
    h("h2", {}, "Dependencies"),
    h("div", { class: "dag-wrap" }, dagSvg(graph, rootId)),
    h("p", { class: "muted small dag-note" },
      `${shown} tasks: parents to the left, dependents to the right. Click one to open it.`,
      more ? h("span", { class: "dag-more", text: " (more not shown)" }) : null));
}

function timeline(task, attempts) {
  if (attempts.length === 0) {
    return h("p", { class: "muted empty",
      text: task.state === "waiting" ? "Waiting for its parents."
        : task.state === "pending" ? "Not claimed yet." : "No attempts recorded." });
  }
  const now = Date.now();
  const times = [ms(task.created_at)];
  for (const a of attempts) {
    times.push(ms(a.claimed_at), ms(a.started_at), a.finished_at ? ms(a.finished_at) : now);
  }
  const valid = times.filter((t) => !Number.isNaN(t));
  const t0 = Math.min(...valid), t1 = Math.max(...valid, t0 + 1);
  const pct = (t) => `${(100 * (t - t0)) / (t1 - t0)}%`;
  const width = (a, b) => `${Math.max(0.6, (100 * (b - a)) / (t1 - t0))}%`;
  const rows = attempts.map((a) => {
    const claimed = ms(a.claimed_at), started = ms(a.started_at);
    const end = a.finished_at ? ms(a.finished_at) : now;
    const outcome = a.outcome || (Number.isNaN(started) ? "dispatched" : "running");
    const segs = [];
    const from = Number.isNaN(claimed) ? started : claimed;
    if (!Number.isNaN(from)) {
      const to = Number.isNaN(started) ? end : started;
      segs.push(h("span", { class: "seg seg-dispatch", title: `claimed → started: ${fmtDuration((to - from) / 1000)}`,
        style: `left:${pct(from)};width:${width(from, to)}` }));
    }
    if (!Number.isNaN(started)) {
      segs.push(h("span", { class: `seg seg-${outcome}${a.outcome ? "" : " live"}`,
        title: `ran ${fmtDuration((end - started) / 1000)}`,
        style: `left:${pct(started)};width:${width(started, end)}` }));
    } else if (a.finished_at && !Number.isNaN(from)) {
      segs.push(h("span", { class: `seg seg-${outcome}`, style: `left:${pct(end)};width:0.6%` }));
    }
    const ran = Number.isNaN(started) ? null : (end - started) / 1000;
    return h("li", { class: "attempt", dataset: { attempt: String(a.attempt), outcome } },
      h("div", { class: "attempt-head" },
        h("span", { class: "attempt-no", text: `#${a.attempt}` }),
        badge(outcome),
        h("span", { class: "muted" }, [a.region, a.worker_id].filter(Boolean).join(" / ") || dash),
        h("span", { class: "muted right" }, ran === null ? "" : fmtDuration(ran))),
      h("div", { class: "track" }, segs),
      (a.reason || (a.exit_code !== null && a.exit_code !== undefined))
        ? h("div", { class: "attempt-reason muted small" },
          a.exit_code !== null && a.exit_code !== undefined ? `exit ${a.exit_code}` : "",
          a.reason && a.exit_code !== null && a.exit_code !== undefined ? " · " : "",
          a.reason || "")
        : null);
  });
  return h("div", { class: "timeline" },
    h("ol", { class: "attempts" }, rows),
    h("div", { class: "axis-row muted small" },
      h("span", { text: new Date(t0).toLocaleTimeString() }),
      h("span", { text: `${fmtDuration((t1 - t0) / 1000)} in all` }),
      h("span", { text: new Date(t1).toLocaleTimeString() })));
}

// Regions: each region's state, breaker, capacity and load; each worker's liveness.
class RegionsView extends View {
  mount() {
    this.root.replaceChildren(
      h("div", { class: "view-error" }),
      h("section", { class: "panel" }, h("h2", { text: "Regions" }), this.regions = h("div")),
      h("section", { class: "panel" }, h("h2", { text: "Workers" }), this.workers = h("div")),
    );
  }

  async load() {
    const [regions, workers] = await Promise.all([api("/v1/regions"), api("/v1/workers")]);
    if (!this.alive) return;
    this.clearError();
    this.regions.replaceChildren(regionsTable(regions.regions || [], false));
    this.workers.replaceChildren(workersTable(workers.workers || []));
  }
}

function meter(used, total) {
  const f = total > 0 ? Math.min(1, used / total) : 0;
  return h("span", { class: "meter", title: `${used} of ${total}` },
    h("span", { class: `fill${f >= 1 ? " full" : ""}`, style: `width:${(f * 100).toFixed(1)}%` }));
}

function regionsTable(regions, compact) {
  if (regions.length === 0) return h("p", { class: "muted empty", text: "No region has registered yet." });
  const head = compact
    ? ["Region", "State", "Breaker", "Running", "Queued", "Workers"]
    : ["Region", "Address", "State", "Breaker", "Capacity", "Max outstanding", "Queued",
      "Running", "Workers", "Heartbeat", "Stale results"];
  return h("table", { class: "grid-table regions-table" },
    h("thead", {}, h("tr", {}, head.map((c) => h("th", { text: c })))),
    h("tbody", {}, regions.map((r) => {
      const breaker = (r.breaker && r.breaker.state) || dash;
      const breakerCell = h("td", { title: r.breaker
        ? `${r.breaker.consecutive_failures} consecutive failures, opened ${r.breaker.opened} times` : "" },
      badge(breaker));
      const cells = compact
        ? [h("td", { class: "strong", text: r.name }), h("td", {}, badge(r.state)), breakerCell,
          h("td", { class: "num" }, `${r.running} / ${r.capacity} `, meter(r.running, r.capacity)),
          h("td", { class: "num", text: String(r.queued) }),
          h("td", { class: "num", text: String(r.workers) })]
        : [h("td", { class: "strong", text: r.name }), h("td", { class: "mono", text: r.address }),
          h("td", {}, badge(r.state)), breakerCell,
          h("td", { class: "num", text: String(r.capacity) }),
          h("td", { class: "num", text: String(r.max_outstanding) }),
          h("td", { class: "num", text: String(r.queued) }),
          h("td", { class: "num" }, `${r.running} `, meter(r.running, r.capacity)),
          h("td", { class: "num", title: (r.worker_ids || []).join(", "), text: String(r.workers) }),
          h("td", {}, when(r.last_heartbeat)),
          h("td", { class: "num", text: String(r.stale_results) })];
      return h("tr", { dataset: { region: r.name, state: r.state } }, cells);
    })));
}

function workersTable(workers) {
  if (workers.length === 0) return h("p", { class: "muted empty", text: "No live workers." });
  return h("table", { class: "grid-table workers-table" },
    h("thead", {}, h("tr", {}, ["Worker", "Region", "Liveness", "Running", "Capacity",
      "Heartbeat", "Health"].map((c) => h("th", { text: c })))),
    h("tbody", {}, workers.map((w) => h("tr", { dataset: { worker: w.id, state: w.state } },
      h("td", { class: "mono strong", text: w.id }),
      h("td", { text: w.region }),
      h("td", {}, badge(w.state)),
      h("td", { class: "num" }, `${w.running} `, meter(w.running, w.capacity)),
      h("td", { class: "num", text: String(w.capacity) }),
      h("td", {}, when(w.last_heartbeat)),
      h("td", { class: "mono small", text: w.health_address || dash })))));
}

// ---- live updates -------------------------------------------------------------------

const VIEWS = { overview: OverviewView, tasks: TasksView, task: TaskView, regions: RegionsView };
let current = null;
let timer = null;
let pending = null;
let mode = "connecting";
let stream = null;
let retryTimer = null;

function setMode(next) {
  mode = next;
  const el = document.getElementById("live");
  el.dataset.mode = next;
  el.querySelector(".label").textContent =
    { events: "live", polling: "polling", reconnecting: "reconnecting", connecting: "connecting" }[next];
  schedule(true);
}

// A refresh soon, at most one per THROTTLE_MS however many events come.
function onEvent(event) {
  if (!current || !current.wants(event)) return;
  if (pending) return;
  pending = setTimeout(() => { pending = null; if (current) current.refresh(); }, THROTTLE_MS);
}

function schedule(now = false) {
  clearTimeout(timer);
  if (now && current) current.refresh();
  timer = setTimeout(() => schedule(true), mode === "events" ? REFRESH_MS : POLL_MS);
}

// One message of the stream, as the EventSource and the fetch() reader both give it.
function onMessage(name, data) {
  if (name === "task") {
    let change = null;
    try { change = JSON.parse(data); } catch { return; }
    onEvent(change);
  }
  // dropped: fell behind (the server closes the stream, and it is taken up again);
  // missed: events were lost before this stream began (its Last-Event-ID was too old).
  else if (name === "dropped" || name === "missed") onEvent(null);
}

// Refused (no such route, or not an event stream): poll, and try again later.
function streamRefused() {
  stream = null;
  setMode("polling");
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, EVENTS_RETRY_MS);
}

function connect() {
  clearTimeout(retryTimer);
  if (token && typeof fetch === "function" && typeof TextDecoderStream === "function") {
    stream = new TokenStream();
    return;
  }
  if (typeof EventSource === "undefined") { setMode("polling"); return; }
  const source = new EventSource("/v1/events");
  stream = source;
  source.addEventListener("open", () => setMode("events"));
  for (const name of ["task", "dropped", "missed"]) {
    source.addEventListener(name, (e) => onMessage(name, e.data));
  }
  source.addEventListener("error", () => {
    if (stream !== source) return;
    // A 401 closes it too: polling then asks for the token, which reconnects.
    if (source.readyState === EventSource.CLOSED) streamRefused();
    else if (mode === "events") setMode("reconnecting");
  });
}

// A token was given: the stream is taken up again with it.
function tokenGiven() {
  if (stream) stream.close();
  stream = null;
  connect();
}

// /v1/events read with fetch(), so that it carries the token; taken up again after the
// last event id it saw (Last-Event-ID) whenever it ends, as EventSource would.
class TokenStream {
  constructor() {
    this.lastId = "";
    this.retryMs = STREAM_RETRY_MS;
    this.abort = new AbortController();
    this.closed = false;
    this.run();
  }

  close() {
    this.closed = true;
    this.abort.abort();
  }

  pause() {
    return new Promise((resolve) => setTimeout(resolve, this.retryMs));
  }

  async run() {
    while (!this.closed) {
      const sent = token;
      const headers = { Accept: "text/event-stream", ...authorization() };
      if (this.lastId) headers["Last-Event-ID"] = this.lastId;
      let response = null;
      try {
        response = await fetch("/v1/events", { headers, cache: "no-store",
          signal: this.abort.signal });
      } catch {
        if (this.closed) return;
        if (mode === "events") setMode("reconnecting");
        await this.pause();
        continue;
      }
      if (response.status === 401) {
        // The token was revoked meanwhile: taken up again with the one given next.
        this.close();
        if (stream === this) stream = null;
        setMode("polling");
        await askToken(sent);
        if (stream === null) connect();
        return;
      }
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !response.body || !type.startsWith("text/event-stream")) {
        this.close();
        if (stream === this) streamRefused();
        return;
      }
      setMode("events");
      try {
        await this.read(response.body);
      } catch {
        // cut: taken up again below
      }
      if (this.closed) return;
      setMode("reconnecting");
      await this.pause();
    }
  }

  // The stream's lines, as the EventSource specification reads them.
  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    // A \r at the end of what came may be half of a \r\n: it waits for the rest.
    const eol = /\r\n|\r(?!$)|\n/g;
    let buffer = "";
    let name = "", data = [], id = this.lastId;
    for (;;) {
      const { value, done } = await reader.read();
      if (done || this.closed) return;
      buffer += value;
      let start = 0;
      eol.lastIndex = 0;
      for (let m = eol.exec(buffer); m; m = eol.exec(buffer)) {
        const line = buffer.slice(start, m.index);
        start = eol.lastIndex;
        if (line === "") {
          this.lastId = id;
          if (data.length) onMessage(name || "message", data.join("\n"));
          name = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue; // a keep-alive
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") name = text;
        else if (field === "data") data.push(text);
        else if (field === "id" && !text.includes("\0")) id = text;
        else if (field === "retry" && /^\d+$/.test(text)) this.retryMs = Number(text);
      }
      buffer = buffer.slice(start);
    }
  }
}

function render() {
  const r = route();
  for (const a of document.querySelectorAll(".tabs a")) {
    a.classList.toggle("active", a.dataset.tab === r.tab);
    if (a.dataset.tab === r.tab) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (current) current.alive = false;
  const root = document.getElementById("view");
  current = new VIEWS[r.name](root, r);
  document.body.dataset.view = r.name;
  current.mount();
  schedule(true);
}

// Relative times stay current between refreshes.
setInterval(() => {
  for (const el of document.querySelectorAll("time.ago")) el.textContent = ago(el.getAttribute("datetime"));
}, 1000);

window.addEventListener("hashchange", render);
render();
connect();
