// The reports console: a token, typed requests on /reports, a live feed, and the echo box.
// The connection (reconnect, resume, resync, the token in an `auth` request) is client.js's;
// this page shows what it says, and keeps the open report and the list in step with the feed.
// Server text is only ever put in the page with textContent (through el() below).
import { CLOSE_NAMES, ReportsClient, RequestError } from "./client.js";

const WS_BASE = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}`;
const FEED_MAX = 200;
const RECENT = 20; // changes replayed into the feed on the first connect
const RETRY_CAP = 8; // seconds: the longest wait between two reconnects
// NOTE: a 1008 says which token problem it is in its reason; these are the ones people hit.
const REFUSALS = {
  "invalid token": "wrong token",
  "token expired": "token expired",
  "token revoked": "token revoked",
  "too many failed logins": "too many failed logins, wait a while",
  "authentication timed out": "authentication timed out",
};
const DROPS = {
  1001: "server closed the connection",
  1011: "server error",
  1012: "server restarting",
  1013: "server busy",
  4001: "too slow to keep up",
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

// -- the /reports connection -----------------------------------------------------------------

let client = null; // the ReportsClient of the latest Connect
// The latest change shown (Connect resumes after it), and whether any change was shown yet.
const feed = { version: null, epoch: null, shown: false };
let countdown = null;

/** The status line: a few words, then (close code: reason) as the detail. */
function setStatus(state, text, drop = null, attempt = 0) {
  const status = $("status");
  status.dataset.state = state;
  status.dataset.code = drop ? String(drop.code) : "";
  status.dataset.attempt = String(attempt);
  const detail = drop ? `close ${drop.code}${drop.reason ? `: ${drop.reason}` : ""}` : "";
  const tries = attempt > 1 ? `, attempt ${attempt}` : "";
  status.replaceChildren(
    text,
    ...(detail ? [" ", el("span", { class: "detail muted" }, `(${detail}${tries})`)] : []),
  );
  $("console").disabled = !["connected", "resynced"].includes(state);
  $("connect").disabled = client !== null;
  $("disconnect").disabled = client === null;
}

function connect() {
  if (client) client.close("connecting again");
  const me = new ReportsClient("/reports", {
    token: $("token").value,
    cap: RETRY_CAP,
    onState: (change) => me === client && onState(me, change),
    onExpiring: (at) => {
      notice("warning", `the token expires at ${when(at)}: give a new one below to stay connected`);
    },
  });
  client = me;
  setStatus("connecting", "connecting…");
  me.connect();
}

function onState(me, change) {
  clearInterval(countdown);
  const drop = change.code === undefined ? null : { code: change.code, reason: change.reason };
  if (change.state === "connected") {
    showIdentity(change.identity);
    setStatus("connected", "connected");
    if (!me.feedStarted) startFeed(me);
  } else if (change.state === "resynced") {
    feed.version = change.version;
    feed.epoch = me.epoch;
    showVersion();
    if (!feed.shown) {
      // NOTE: the first replay reached back further than the server keeps: nothing was missed.
      feedNote(`older changes are no longer kept (now at version ${change.version})`);
      return;
    }
    setStatus("resynced", "resynced");
    feedNote(`changes were missed (now at version ${change.version}): the lists were reloaded`);
    reload();
  } else if (change.state === "reconnecting") {
    showIdentity(null);
    const words = DROPS[drop.code] || "connection lost";
    const due = Date.now() + change.delay * 1000;
    const tick = () => {
      const left = Math.ceil((due - Date.now()) / 1000);
      const next = left > 0 ? `reconnecting in ${left} s` : "reconnecting…";
      setStatus("reconnecting", `${words}, ${next}`, drop, change.attempt);
    };
    tick();
    countdown = setInterval(tick, 250);
  } else if (change.state === "stopped") {
    client = null;
    showIdentity(null);
    if (drop.code === 1000) setStatus("disconnected", "disconnected", drop);
    else if (drop.code === 1008) setStatus("closed", REFUSALS[drop.reason] || "refused", drop);
    else setStatus("closed", `closed: ${CLOSE_NAMES[drop.code] || "stopped"}`, drop);
  }
}

/** The feed: from where it was (Connect again), or the latest changes (the first Connect). */
async function startFeed(me) {
  me.feedStarted = true;
  let { version: since, epoch } = feed;
  try {
    if (since === null) {
      const pong = await me.ping();
      since = Math.max(0, pong.version - RECENT);
      epoch = pong.epoch;
    }
    await me.subscribe({ since, epoch, onChange: (event) => me === client && onChange(event) });
    if (feed.version === null) feed.version = me.version;
    showVersion();
  } catch (error) {
    if (me === client) feedNote(`could not follow the changes: ${error.message}`);
  }
  if (!$("results").hasChildNodes()) browse({ type: "list" });
}

function onChange(event) {
  addEvent(event);
  feed.shown = true;
  feed.version = event.version;
  feed.epoch = client.epoch;
  showVersion();
  followReport(event);
  followList(event);
}

/** After a resync: what the page shows may be stale, so fetch it again. */
function reload() {
  if (shownReport) getReport(shownReport);
  browse(browsing || { type: "list" });
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
    // The client reconnects (after a drop) with the new token from now on.
    showIdentity(await client.auth(token));
  } catch (failure) {
    notice("error", `new token refused: ${failure.message}; the old one stays in force`);
    return;
  }
  $("token").value = token;
  input.value = "";
  notice("ok", "new token in force");
}

// -- the live feed ----------------------------------------------------------------------------

function showVersion() {
  $("feed-version").textContent = feed.version === null ? "" : `at version ${feed.version}`;
}

function pushFeed(item) {
  const list = $("feed");
  list.prepend(item);
  while (list.childElementCount > FEED_MAX) list.lastElementChild.remove();
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
}

function feedNote(text) {
  pushFeed(el("li", { class: "note", "data-testid": "feed-note" }, text));
}

// -- one report -------------------------------------------------------------------------------

let shownReport = null; // the name of the report the panel shows: it follows its changes

function showReport(report) {
  $("report-name").textContent = report.name;
  $("report-title").textContent = report.title;
  $("report-content").textContent = report.content;
  $("report-created").textContent = when(report.created_at);
  $("report-updated").textContent = when(report.updated_at);
  $("report-version").textContent = String(report.version);
  $("report-error").hidden = true;
  $("report").hidden = false;
  $("report").dataset.removed = "";
  shownReport = report.name;
}

function liveNote(text, kind = "") {
  const line = $("report-live");
  line.textContent = text;
  line.dataset.kind = kind;
  line.hidden = text === "";
}

async function getReport(name) {
  $("get-name").value = name;
  liveNote("");
  try {
    showReport(await client.get(name));
  } catch (failure) {
    const error = $("report-error");
    error.textContent =
      failure instanceof RequestError && failure.code === "not_found"
        ? `no report named “${name}”`
        : failure.message;
    error.hidden = false;
    $("report").hidden = true;
    shownReport = null;
  }
}

function followReport(event) {
  const { report } = event;
  if (report.name !== shownReport) return;
  if (event.type === "report.removed") {
    $("report").dataset.removed = "true";
    liveNote(`removed at version ${event.version}: this is what it was`, "removed");
    return;
  }
  showReport(report);
  const what = event.type === "report.added" ? "added again" : "changed";
  liveNote(`${what} at version ${event.version}`);
}

// -- list and search --------------------------------------------------------------------------

let browsing = null; // {type, q?, next}: the list or search the "More" button continues
let browseSeq = 0; // only the latest list or search fills the results

function resultItem(report) {
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
  item.dataset.version = String(report.version);
  return item;
}

function summarize() {
  const count = $("results").childElementCount;
  const what = browsing?.type === "search" ? `matching “${browsing.q}”` : "newest first";
  const more = browsing?.next ? ", more below" : "";
  $("results-summary").textContent = `${count} report${count === 1 ? "" : "s"} ${what}${more}`;
}

async function browse(query, cursor = null) {
  const seq = ++browseSeq;
  const limit = Math.min(Math.max(Number($("page-size").value) || 10, 1), 100);
  const fields = { limit, ...(query.q ? { q: query.q } : {}), ...(cursor ? { cursor } : {}) };
  const results = $("results");
  let page;
  try {
    page = await client.request(query.type, fields);
  } catch (failure) {
    if (seq === browseSeq) $("results-summary").textContent = failure.message;
    return;
  }
  if (seq !== browseSeq) return;
  if (!cursor) results.replaceChildren();
  for (const report of page.reports) results.append(resultItem(report));
  browsing = { ...query, next: page.next };
  $("more").hidden = page.next === null;
  summarize();
}

/** A change, in the results: the newest-first list gains it on top; a removal drops it. */
function followList(event) {
  if (!browsing) return;
  const { report } = event;
  const results = $("results");
  const old = [...results.children].find((item) => item.dataset.name === report.name);
  if (event.type === "report.removed") old?.remove();
  else if (browsing.type === "list") {
    old?.remove();
    results.prepend(resultItem(report));
  } else old?.replaceWith(resultItem(report)); // NOTE: a search is not run again for a change
  summarize();
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

on("token-form", "submit", connect);
on("disconnect", "click", () => client?.close("disconnected by the user"));
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
