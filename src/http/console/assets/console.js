// ms1-ingestor console: fills the page from the public control API and keeps it fresh.
// No framework and no inline code (the Content-Security-Policy forbids it): every value is
// put in with textContent, never as HTML.
"use strict";

const REFRESH_MS = 3000;

function $(id) {
  return document.getElementById(id);
}

function csrf() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

// Calls the control API with the session cookie (and the CSRF token on changes). A 401 means
// the session is over: back to the sign-in page.
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    headers["X-CSRF-Token"] = csrf();
  }
  const resp = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401) {
    window.location.assign("/console/login");
    throw new Error("signed out");
  }
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok && !(path === "/ready" && resp.status === 503)) {
    const message = data.error && data.error.message ? data.error.message : resp.statusText;
    throw new Error(`${resp.status}: ${message}`);
  }
  return data;
}

function text(id, value) {
  const el = $(id);
  if (el) el.textContent = value === undefined || value === null ? "–" : String(value);
  return el;
}

function stateText(id, value) {
  const el = text(id, value);
  if (el) el.className = `state-${String(value)}`;
}

function number(n) {
  return n === undefined || n === null ? "–" : Number(n).toLocaleString("en");
}

function age(ms) {
  if (ms === undefined || ms === null) return "–";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "–";
}

function result(message, isError) {
  const el = $("result");
  if (!el) return;
  el.textContent = message;
  el.className = isError ? "result error" : "result";
}

// A confirmation in the page (a <dialog>): resolves true when the operator confirms.
function confirmAction(message) {
  const dialog = $("confirm");
  text("confirm-text", message);
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

function cell(row, value, className) {
  const td = document.createElement("td");
  td.textContent = value === undefined || value === null ? "–" : String(value);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

const SVG = "http://www.w3.org/2000/svg";

function rect(x, y, w, h, className) {
  const r = document.createElementNS(SVG, "rect");
  r.setAttribute("x", x);
  r.setAttribute("y", y);
  r.setAttribute("width", w);
  r.setAttribute("height", h);
  if (className) r.setAttribute("class", className);
  return r;
}

// ---------------------------------------------------------------- overview

async function refreshOverview() {
  const [status, ready, rates] = await Promise.all([
    api("GET", "/session/status"),
    api("GET", "/ready"),
    api("GET", "/rates?minutes=60"),
  ]);
  stateText("session-state", status.status);
  text("session-mode", status.polling_mode ? `${status.polling_mode}, every ${status.polling_interval} s${status.enable_webhook ? ", webhooks" : ""}` : "–");
  text("session-id", status.session_id);
  text("session-started", status.started_at);
  $("session-start").disabled = status.status === "running" || status.status === "draining";
  $("session-stop").disabled = status.status !== "running";
  text("count-processed", number(status.emails_processed));
  text("count-delivered", number(status.emails_delivered));
  text("count-dead", number(status.emails_dead_lettered));
  text("count-duplicate", number(status.emails_duplicate));
  text("count-queued", number(status.queue_depth));
  text("count-dlq", number(status.dead_letter_depth));

  stateText("ready", ready.ready);
  stateText("ready-redis", ready.redis);
  stateText("ready-ms4-auth", ready.ms4_auth);
  stateText("breaker", ready.ms4_breaker);
  const reasons = (ready.reasons || []).map((r) => {
    const li = document.createElement("li");
    li.textContent = r;
    return li;
  });
  for (const [source, why] of Object.entries(ready.degraded_sources || {})) {
    const li = document.createElement("li");
    li.textContent = `${source}: ${why}`;
    reasons.push(li);
  }
  $("ready-reasons").replaceChildren(...reasons);

  const used = rates.ms4_requests_last_60s;
  const limit = rates.ms4_limit_per_min;
  text("budget-used", number(used));
  text("budget-limit", limit > 0 ? `${number(limit)} per minute` : "none");
  const share = limit > 0 ? Math.min(1, used / limit) : 0;
  $("budget-bar").replaceChildren(rect(0, 0, 100 * share, 6, share >= 0.95 ? "full" : ""));

  const minutes = rates.delivered_per_minute || [];
  const max = Math.max(1, ...minutes.map((m) => m[1]));
  const width = 600 / Math.max(1, minutes.length);
  $("rate-chart").replaceChildren(
    ...minutes.map((m, i) => {
      const h = (150 * m[1]) / max;
      const bar = rect(i * width + 1, 160 - h, Math.max(1, width - 2), h);
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${new Date(m[0]).toLocaleTimeString()}: ${m[1]} delivered`;
      bar.appendChild(title);
      return bar;
    }),
  );
  text("rate-last", number(minutes.length ? minutes[minutes.length - 1][1] : 0));
  text("rate-hour", number(minutes.reduce((sum, m) => sum + m[1], 0)));
}

function initOverview() {
  $("session-start").addEventListener("click", async () => {
    const mode = $("start-mode").value;
    if (!(await confirmAction(`Start a session (${mode} polling)?`))) return;
    try {
      const r = await api("POST", "/session/start", { polling_mode: mode });
      result(`Session started: ${r.session_id}`);
    } catch (e) {
      result(`Could not start: ${e.message}`, true);
    }
    await refreshOverview().catch(() => {});
  });
  $("session-stop").addEventListener("click", async () => {
    if (!(await confirmAction("Stop the running session? Polling stops; what is queued is still delivered."))) return;
    try {
      const r = await api("POST", "/session/stop", { reason: "stopped from the console" });
      result(`Session ${r.session_id} stopped.`);
    } catch (e) {
      result(`Could not stop: ${e.message}`, true);
    }
    await refreshOverview().catch(() => {});
  });
  return refreshOverview;
}

// ---------------------------------------------------------------- sources

async function refreshSources() {
  const { sources } = await api("GET", "/sources");
  replaceRows(
    document.querySelector("#sources tbody"),
    sources.map((s) => {
      const tr = document.createElement("tr");
      tr.dataset.source = s.name;
      cell(tr, s.name);
      cell(tr, s.kind);
      cell(tr, s.tenant);
      cell(tr, s.state, `state-${s.state}`);
      cell(tr, s.reason);
      cell(tr, s.lease_holder);
      cell(tr, when(s.last_poll_ms));
      cell(tr, age(s.cursor_age_ms), "num");
      cell(tr, number(s.messages_today), "num");
      cell(tr, number(s.parked_entries), "num");
      cell(tr, s.subscription_expires);
      return tr;
    }),
  );
}

// ---------------------------------------------------------------- queues

const STALE_MS = 60000;

async function refreshQueues() {
  const { streams } = await api("GET", "/queues");
  const rows = [];
  for (const s of streams) {
    const groups = s.groups.length ? s.groups : [null];
    for (const g of groups) {
      const tr = document.createElement("tr");
      tr.dataset.stream = s.name;
      cell(tr, s.name);
      cell(tr, number(s.length), "num");
      cell(tr, s.oldest_age_ms === null ? "–" : age(s.oldest_age_ms), "num");
      cell(tr, g ? g.name : "–");
      cell(tr, g ? number(g.pending) : "–", "num");
      cell(tr, g && g.lag !== null ? number(g.lag) : "–", "num");
      const consumers = cell(tr, "");
      for (const c of g ? g.consumers : []) {
        const span = document.createElement("span");
        const stale = c.pending > 0 && c.idle_ms > STALE_MS;
        span.textContent = `${c.name} (${c.pending}, ${age(c.idle_ms)}) `;
        if (stale) {
          span.className = "stale";
          span.title = "holds pending entries and has been idle for over a minute: its daemon may be gone";
          tr.className = "stale";
        }
        consumers.appendChild(span);
      }
      rows.push(tr);
    }
  }
  replaceRows(document.querySelector("#streams tbody"), rows);
}

// ---------------------------------------------------------------- dead letters

const selected = new Set();

// The filter form as API criteria (empty ones left out).
function dlqFilter() {
  const f = {};
  for (const key of ["stage", "reason", "mailbox"]) {
    const v = $(`f-${key}`).value.trim();
    if (v) f[key] = v;
  }
  const since = Date.parse($("f-since").value);
  const until = Date.parse($("f-until").value);
  if (!Number.isNaN(since)) f.since_ms = since;
  if (!Number.isNaN(until)) f.until_ms = until;
  return f;
}

function query(filter) {
  return new URLSearchParams(Object.entries(filter).map(([k, v]) => [k, String(v)])).toString();
}

async function refreshDeadLetters() {
  const filter = dlqFilter();
  const page = await api("GET", `/dlq?count=200&${query(filter)}`);
  const ids = new Set(page.entries.map((e) => e.id));
  for (const id of [...selected]) if (!ids.has(id)) selected.delete(id);
  replaceRows(
    document.querySelector("#dead-letters tbody"),
    page.entries.map((e) => {
      const tr = document.createElement("tr");
      tr.dataset.id = e.id;
      const pick = document.createElement("input");
      pick.type = "checkbox";
      pick.className = "pick";
      pick.checked = selected.has(e.id);
      pick.setAttribute("aria-label", `Select ${e.id}`);
      pick.addEventListener("change", () => (pick.checked ? selected.add(e.id) : selected.delete(e.id)));
      const td = document.createElement("td");
      td.appendChild(pick);
      tr.appendChild(td);
      cell(tr, when(Number(e.id.split("-")[0])));
      cell(tr, e.stage);
      cell(tr, e.reason, "reason");
      cell(tr, e.status || "–", "num");
      cell(tr, e.mailbox);
      cell(tr, e.key);
      const open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      open.textContent = "Open";
      open.addEventListener("click", () => openDeadLetter(e.id));
      const last = document.createElement("td");
      last.appendChild(open);
      tr.appendChild(last);
      return tr;
    }),
  );
  text("dlq-total", `${page.entries.length} shown · ${page.total} in the dead-letter stream`);
  $("select-all").checked = page.entries.length > 0 && page.entries.every((e) => selected.has(e.id));
}

function pretty(s) {
  try {
    return JSON.stringify(JSON.parse(s), null, 2);
  } catch (_) {
    return s || "–";
  }
}

async function openDeadLetter(id) {
  try {
    const d = await api("GET", `/dlq/${encodeURIComponent(id)}`);
    text("dl-id", d.id);
    text("dl-reason", d.reason);
    text("dl-stage", d.stage);
    text("dl-attempts", d.attempts);
    text("dl-response", pretty(d.response));
    text("dl-payload", pretty(d.payload));
    $("dead-letter").hidden = false;
  } catch (e) {
    result(`Cannot open ${id}: ${e.message}`, true);
  }
}

// Replays or purges the selected dead letters (`matching` false) or every one the filter
// selects, after a confirmation that says how many.
async function act(verb, matching) {
  let body;
  let count;
  if (matching) {
    const filter = dlqFilter();
    count = (await api("GET", `/dlq/count?${query(filter)}`)).matching;
    body = Object.keys(filter).length ? { filter } : { all: true };
  } else {
    count = selected.size;
    body = { ids: [...selected] };
  }
  if (count === 0) {
    result(matching ? "No dead letter matches the filter." : "Select dead letters first.", true);
    return;
  }
  const what = matching ? "matching the filter" : "selected";
  if (!(await confirmAction(`${verb === "replay" ? "Replay" : "Purge"} ${count} dead letter${count === 1 ? "" : "s"} ${what}?${verb === "purge" ? " They are deleted for good." : ""}`))) return;
  try {
    const r = await api("POST", `/dlq/${verb}`, body);
    const n = verb === "replay" ? r.replayed : r.purged;
    result(`${verb === "replay" ? "Replayed" : "Purged"} ${n} dead letter${n === 1 ? "" : "s"}.`);
    selected.clear();
    // What was open may be gone (purged) or back in the pipeline (replayed).
    $("dead-letter").hidden = true;
  } catch (e) {
    result(`Could not ${verb}: ${e.message}`, true);
  }
  await refreshDeadLetters().catch(() => {});
}

function initDeadLetters() {
  $("dlq-filter").addEventListener("submit", (ev) => {
    ev.preventDefault();
    refreshDeadLetters().catch((e) => result(e.message, true));
  });
  $("select-all").addEventListener("change", (ev) => {
    for (const box of document.querySelectorAll("#dead-letters input.pick")) {
      box.checked = ev.target.checked;
      const id = box.closest("tr").dataset.id;
      if (box.checked) selected.add(id);
      else selected.delete(id);
    }
  });
  $("replay-selected").addEventListener("click", () => act("replay", false));
  $("purge-selected").addEventListener("click", () => act("purge", false));
  $("replay-matching").addEventListener("click", () => act("replay", true));
  $("purge-matching").addEventListener("click", () => act("purge", true));
  return refreshDeadLetters;
}

// ---------------------------------------------------------------- start

const PAGES = {
  overview: initOverview,
  sources: () => refreshSources,
  queues: () => refreshQueues,
  "dead-letters": initDeadLetters,
};

document.addEventListener("DOMContentLoaded", () => {
  const init = PAGES[document.body.dataset.page];
  if (!init) return;
  const refresh = init();
  const tick = () =>
    refresh().then(
      () => document.body.classList.remove("stale"),
      (e) => {
        document.body.classList.add("stale");
        if (e.message !== "signed out") result(`Cannot refresh: ${e.message}`, true);
      },
    );
  tick();
  setInterval(tick, REFRESH_MS);
});
