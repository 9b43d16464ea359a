// The reports console: a token, typed requests on /reports, a live feed, and the echo box.
// The token goes in an `auth` request, first and whenever the user gives a new one.
// Server text is only ever put in the page with textContent (through el() below).
"use strict";

const WS_BASE = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}`;
const FEED_MAX = 200;
const RETRY_MAX_MS = 15000;
const CLOSE_NAMES = {
  1000: "normal closure",
  1001: "going away",
  1006: "connection lost",
  1008: "policy violation",
  1009: "message too big",
  1011: "server error",
  1012: "service restart",
  1013: "try again later",
  4001: "too slow",
};

const $ = (id) => document.getElementById(id);

/** A new element; strings among the children become text nodes, never markup. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  node.append(...children);
  return node;
}

function when(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

class RequestError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
  }
}

// -- the /reports connection -----------------------------------------------------------------

const conn = {
  socket: null,
  token: "",
  wanted: false, // the user asked to be connected: reconnect when the connection drops
  retryTimer: null,
  retryMs: 1000,
  lastVersion: null, // the latest change the feed has shown; resumed from on reconnect
  nextId: 1,
  pending: new Map(), // request id -> {resolve, reject}
};

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
  $("console").disabled = state !== "connected";
  $("connect").disabled = conn.wanted;
  $("disconnect").disabled = !conn.wanted;
}

function request(type, fields = {}) {
  return new Promise((resolve, reject) => {
    const socket = conn.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      reject(new Error("not connected"));
      return;
    }
    const id = conn.nextId++;
    conn.pending.set(id, { resolve, reject });
    socket.send(JSON.stringify({ id, type, ...fields }));
  });
}

function connect() {
  clearTimeout(conn.retryTimer);
  setStatus("connecting", "connecting…");
  const socket = new WebSocket(`${WS_BASE}/reports`);
  conn.socket = socket;
  socket.onopen = () => start(socket);
  socket.onmessage = (event) => onMessage(event.data);
  socket.onclose = (event) => onClose(socket, event);
}

function disconnect() {
  conn.wanted = false;
  clearTimeout(conn.retryTimer);
  if (conn.socket) conn.socket.close(1000, "disconnected by the user");
  else setStatus("disconnected", "disconnected");
}

async function start(socket) {
  setStatus("authenticating", "authenticating…");
  try {
    showIdentity(await request("auth", { token: conn.token }));
  } catch (error) {
    // A bad token closes the connection: onClose tells why.
    if (conn.socket === socket && error instanceof RequestError) {
      setStatus("error", `authentication failed: ${error.message}`);
    }
    return;
  }
  await subscribe(socket);
}

async function subscribe(socket) {
  let since = conn.lastVersion;
  try {
    let result;
    try {
      result = await request("subscribe", since === null ? {} : { since });
    } catch (error) {
      if (since === null || !(error instanceof RequestError)) throw error;
      // Too far behind to replay: start afresh from now.
      feedNote(`could not resume after version ${since} (${error.message}): reload the lists`);
      since = null;
      result = await request("subscribe");
    }
    // When resuming, the replayed events (or a resync) that follow carry the versions.
    if (since === null) conn.lastVersion = result.version;
    showVersion();
  } catch (error) {
    if (conn.socket === socket) setStatus("error", `subscribe failed: ${error.message}`);
    return;
  }
  if (conn.socket !== socket) return;
  conn.retryMs = 1000;
  setStatus("connected", "connected");
  if (!$("results").hasChildNodes()) browse({ type: "list" });
}

function onClose(socket, event) {
  if (conn.socket !== socket) return;
  conn.socket = null;
  for (const { reject } of conn.pending.values()) reject(new Error("connection closed"));
  conn.pending.clear();
  showIdentity(null);
  const reason = event.reason || CLOSE_NAMES[event.code] || "";
  const closed = `closed ${event.code}${reason ? ` (${reason})` : ""}`;
  if (event.code === 1008) conn.wanted = false; // a bad token stays bad: do not retry
  if (!conn.wanted) {
    setStatus(event.code === 1000 ? "disconnected" : "closed", closed);
    return;
  }
  const delay = conn.retryMs;
  conn.retryMs = Math.min(conn.retryMs * 2, RETRY_MAX_MS);
  setStatus("reconnecting", `${closed}; reconnecting in ${Math.round(delay / 1000)} s…`);
  conn.retryTimer = setTimeout(connect, delay);
}

function onMessage(data) {
  let message;
  try {
    message = JSON.parse(data);
  } catch {
    return;
  }
  if (message === null || typeof message !== "object") return;
  const waiting = conn.pending.get(message.id);
  if (waiting && ("result" in message || "error" in message)) {
    conn.pending.delete(message.id);
    if (message.error) waiting.reject(new RequestError(message.error.code, message.error.message));
    else waiting.resolve(message.result);
  } else if (message.type === "token.expiring") {
    const at = when(message.expires_at);
    notice("warning", `the token expires at ${at}: give a new one below to stay connected`);
  } else if (message.type === "resync") {
    conn.lastVersion = message.version;
    feedNote(`changes were missed while away (now at version ${message.version}): reload the lists`);
  } else if (typeof message.type === "string" && message.type.startsWith("report.")) {
    addEvent(message);
  }
}

// -- who the connection is, and a new token in band -------------------------------------------

function permissions(identity) {
  const may = [identity.read && "read", identity.write && "write"].filter(Boolean);
  const reports = identity.reports.includes("*")
    ? "every report"
    : `reports ${identity.reports.join(", ")}`;
  return may.length ? `may ${may.join(" and ")} ${reports}` : "may not read or write";
}

/** Show the identity of an `auth` reply, or none (null) when not connected. */
function showIdentity(identity) {
  const shown = $("identity");
  const expiry = $("expiry");
  if (identity === null) {
    shown.textContent = "not connected";
    expiry.textContent = "";
    delete expiry.dataset.expiresAt;
    notice(null);
    return;
  }
  shown.replaceChildren(
    "connected as ",
    el("strong", { id: "identity-subject" }, String(identity.subject)),
    el("span", { id: "identity-permissions", class: "muted" }, ` · ${permissions(identity)}`),
  );
  expiry.textContent = identity.expires_at
    ? `token expires at ${when(identity.expires_at)}`
    : "no expiry";
  expiry.dataset.expiresAt = identity.expires_at || "";
}

/** One line about the token: kind is "warning", "error" or "ok"; null hides it. */
function notice(kind, text = "") {
  const line = $("token-notice");
  line.hidden = kind === null;
  line.dataset.kind = kind || "";
  line.textContent = text;
}

async function refreshToken() {
  const input = $("new-token");
  const token = input.value;
  try {
    showIdentity(await request("auth", { token }));
  } catch (failure) {
    notice("error", `new token refused: ${failure.message}; the old one stays in force`);
    return;
  }
  // Reconnecting (after a drop, or with Connect) uses the new token from now on.
  conn.token = token;
  $("token").value = token;
  input.value = "";
  notice("ok", "new token in force");
}

// -- the live feed ----------------------------------------------------------------------------

function showVersion() {
  $("feed-version").textContent = conn.lastVersion === null ? "" : `at version ${conn.lastVersion}`;
}

function pushFeed(item) {
  const feed = $("feed");
  feed.prepend(item);
  while (feed.childElementCount > FEED_MAX) feed.lastElementChild.remove();
}

function addEvent(message) {
  const report = message.report || {};
  const kind = message.type.slice("report.".length);
  const item = el(
    "li",
    { class: `event ${kind}`, "data-testid": "feed-item" },
    el("span", { class: "kind" }, kind),
    el("strong", { class: "name" }, String(report.name)),
    el("span", { class: "title" }, String(report.title)),
    el("span", { class: "version muted" }, `v${message.version}`),
  );
  item.dataset.type = message.type;
  item.dataset.name = String(report.name);
  item.dataset.version = String(message.version);
  pushFeed(item);
  conn.lastVersion = Math.max(conn.lastVersion ?? 0, message.version);
  showVersion();
}

function feedNote(text) {
  pushFeed(el("li", { class: "note", "data-testid": "feed-note" }, text));
}

// -- one report -------------------------------------------------------------------------------

async function getReport(name) {
  $("get-name").value = name;
  const error = $("report-error");
  try {
    const report = await request("get", { name });
    $("report-name").textContent = report.name;
    $("report-title").textContent = report.title;
    $("report-content").textContent = report.content;
    $("report-created").textContent = when(report.created_at);
    $("report-updated").textContent = when(report.updated_at);
    $("report-version").textContent = String(report.version);
    error.hidden = true;
    $("report").hidden = false;
  } catch (failure) {
    error.textContent =
      failure instanceof RequestError && failure.code === "not_found"
        ? `no report named “${name}”`
        : failure.message;
    error.hidden = false;
    $("report").hidden = true;
  }
}

// -- list and search --------------------------------------------------------------------------

let browsing = null; // {type, q?, next}: the list or search the "More" button continues
let browseSeq = 0; // only the latest list or search fills the results

async function browse(query, cursor = null) {
  const seq = ++browseSeq;
  const limit = Math.min(Math.max(Number($("page-size").value) || 10, 1), 100);
  const fields = { limit, ...(query.q ? { q: query.q } : {}), ...(cursor ? { cursor } : {}) };
  const results = $("results");
  const summary = $("results-summary");
  let page;
  try {
    page = await request(query.type, fields);
  } catch (failure) {
    if (seq === browseSeq) summary.textContent = failure.message;
    return;
  }
  if (seq !== browseSeq) return;
  if (!cursor) results.replaceChildren();
  for (const report of page.reports) {
    const open = el("button", { type: "button", class: "link" }, report.name);
    open.addEventListener("click", () => getReport(report.name));
    const item = el(
      "li",
      { "data-testid": "result-item" },
      open,
      el("span", { class: "title" }, report.title),
      el("span", { class: "muted" }, `updated ${when(report.updated_at)} · v${report.version}`),
    );
    item.dataset.name = report.name;
    results.append(item);
  }
  browsing = { ...query, next: page.next };
  $("more").hidden = page.next === null;
  const what = query.type === "search" ? `matching “${query.q}”` : "newest first";
  const count = results.childElementCount;
  summary.textContent = `${count} report${count === 1 ? "" : "s"} ${what}${page.next ? ", more below" : ""}`;
}

// -- echo -------------------------------------------------------------------------------------

let echo = null;

function echoSend(text) {
  if (echo && echo.readyState === WebSocket.OPEN) {
    echo.send(text);
    return;
  }
  if (!echo || echo.readyState !== WebSocket.CONNECTING) {
    echo = new WebSocket(`${WS_BASE}/echo`);
    echo.onmessage = (event) => {
      let line = event.data;
      try {
        const reply = JSON.parse(event.data);
        if (reply && "message" in reply) line = `${reply.message} · ${when(reply.date)}`;
      } catch {}
      $("echo-log").prepend(el("li", {}, line));
    };
  }
  echo.addEventListener("open", () => echo.send(text), { once: true });
}

// -- wiring -----------------------------------------------------------------------------------

function on(id, type, handler) {
  $(id).addEventListener(type, (event) => {
    event.preventDefault();
    handler();
  });
}

on("token-form", "submit", () => {
  conn.token = $("token").value;
  conn.wanted = true;
  conn.retryMs = 1000;
  connect();
});
on("disconnect", "click", disconnect);
on("refresh-form", "submit", refreshToken);
on("get-form", "submit", () => getReport($("get-name").value.trim()));
on("list", "click", () => browse({ type: "list" }));
on("search-form", "submit", () => browse({ type: "search", q: $("search-q").value }));
on("more", "click", () => browsing && browsing.next && browse(browsing, browsing.next));
on("echo-form", "submit", () => {
  const input = $("echo-input");
  echoSend(input.value);
  input.value = "";
});
