// A client for the service's /reports WebSocket that keeps the server's promise by itself: it
// reconnects (exponential backoff, full jitter), sends its token again, and resumes its
// subscription with `since` (the last version it delivered) and `epoch`, so a subscriber sees
// every change once, in order, across drops and server restarts. No dependencies.
//
//   import { ReportsClient } from "/static/client.js";
//   const client = new ReportsClient("/reports", { token, onState: (s) => console.log(s) });
//   client.connect();
//   await client.subscribe({ since: 0, onChange: (event) => console.log(event) });
//   console.log(await client.get("report1"));

// Close codes after which trying again can work: going away (idle), lost, server error, server
// restarting, try again later, too slow. Any other one (1008: a wrong or expired token) stops.
// RETRY is the client's own, for a connection it gave up on (a failed resubscribe).
const RETRY = 4900;
const RECONNECT = new Set([1001, 1006, 1011, 1012, 1013, 4001, RETRY]);
// Requests that may be sent again when their reply was lost in a drop: they change nothing.
const READS = new Set(["get", "list", "search", "ping"]);
export const CLOSE_NAMES = {
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

/** An error reply: `code` is the protocol's (not_found, forbidden, conflict, rate_limited, ...). */
export class RequestError extends Error {
  constructor(code, message, retryAfter = null) {
    super(`${code}: ${message}`);
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

function socketUrl(url) {
  const found = new URL(url, globalThis.location?.href);
  if (found.protocol === "http:" || found.protocol === "https:") {
    found.protocol = found.protocol === "https:" ? "wss:" : "ws:";
  }
  return found.href;
}

export class ReportsClient {
  /**
   * url: the /reports endpoint (relative to the page, or ws(s)://). One of token (a string)
   * or tokenProvider (an async function returning one; asked on every connect and when the
   * server warns the token is expiring). onState gets {state, ...}: "connected" {identity},
   * "reconnecting" {delay (s), attempt, code, reason (of the drop that started the retries)},
   * "resynced" {version}, "stopped" {code, reason}. onExpiring(expiresAt, error) is called when
   * the token expires soon and there is no provider (error: null), or the provider failed.
   * base and cap (s) bound the backoff; timeout (s) bounds a request's wait for a connection.
   */
  constructor(url = "/reports", options = {}) {
    const { token = "", tokenProvider = null, onState = () => {}, onExpiring = () => {} } = options;
    Object.assign(this, { url: socketUrl(url), token, tokenProvider, onState, onExpiring });
    this.base = options.base ?? 1;
    this.cap = options.cap ?? 30;
    this.timeout = options.timeout ?? 10;
    this.identity = null;
    this.version = null; // the last version delivered to the subscription
    this.epoch = null; // the epoch that version belongs to
    this._wanted = false;
    this._socket = null;
    this._ready = false; // authenticated (and resubscribed): requests may go
    this._attempt = 0;
    this._cause = null; // {code, reason} of the drop the current retries started from
    this._retry = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> {type, fields, resolve, reject}
    this._waiting = []; // requests made while not connected
    this._sub = null; // {names, onChange, onResync}
    this._stopReason = null;
  }

  connect() {
    this._wanted = true;
    this._attempt = 0;
    this._cause = null;
    this._open();
    return this;
  }

  close(reason = "closed by the client") {
    this._wanted = false;
    this._stopReason = reason;
    clearTimeout(this._retry);
    const socket = this._socket;
    if (socket?.readyState === WebSocket.OPEN) {
      socket.close(1000, reason);
      return;
    }
    this._socket = null; // NOTE: not open yet (or retrying): nothing to wait for
    socket?.close();
    this._stop(1000, reason);
  }

  get = (name) => this.request("get", { name });
  list = (fields = {}) => this.request("list", fields);
  search = (q, fields = {}) => this.request("search", { q, ...fields });
  put = (name, title, content, fields = {}) =>
    this.request("put", { name, title, content, ...fields });
  remove = (name, fields = {}) => this.request("remove", { name, ...fields });
  ping = () => this.request("ping");

  /** Replace the token on the open connection; the new one is also used to reconnect. */
  async auth(token) {
    this.identity = await this.request("auth", { token });
    this.token = token;
    return this.identity;
  }

  /** A typed request; while reconnecting it waits (up to `timeout` s) for the connection. */
  request(type, fields = {}) {
    return new Promise((resolve, reject) => {
      const entry = { type, fields, resolve, reject };
      if (this._ready) this._send(this._socket, entry);
      else if (this._wanted) this._wait(entry);
      else reject(new Error("not connected"));
    });
  }

  /**
   * Changes to `names` (null: every report) after `since` (null: from now on), to onChange
   * ({type, report, version}); each once, in order, across reconnects. onResync(version) when
   * changes were missed and cannot be replayed: fetch again. Sent now if connected, else on
   * connect; the reply ({names, version, epoch}) when sent now.
   */
  async subscribe({ names = null, since = null, epoch = null, onChange, onResync } = {}) {
    const again = this._sub !== null && this._ready;
    this._sub = { names, onChange: onChange || (() => {}), onResync: onResync || (() => {}) };
    this.version = since;
    this.epoch = epoch;
    if (!this._ready) return null;
    // NOTE: the server resumes with since only a connection that is not subscribed yet.
    if (again) await this._call(this._socket, "unsubscribe", {});
    return this._subscribeOn(this._socket);
  }

  // -- the connection --------------------------------------------------------------------

  _open() {
    const socket = new WebSocket(this.url);
    this._socket = socket;
    socket.onopen = () => this._start(socket);
    socket.onmessage = (event) => this._onMessage(event.data);
    socket.onclose = (event) => this._onClose(socket, event);
  }

  async _start(socket) {
    try {
      if (this.tokenProvider) this.token = await this.tokenProvider();
    } catch (error) {
      this._wanted = false;
      this._stopReason = `the token provider failed: ${error.message}`;
      socket.close(1000, "no token");
      return;
    }
    let identity;
    try {
      identity = await this._call(socket, "auth", { token: this.token });
    } catch {
      return; // NOTE: the server closes the connection (1008 for a bad token): onClose says why
    }
    try {
      if (this._sub) await this._subscribeOn(socket);
    } catch (error) {
      // NOTE: the database down, say: this connection cannot deliver; a later one may.
      if (socket === this._socket) socket.close(RETRY, String(error.message).slice(0, 100));
      return;
    }
    if (socket !== this._socket) return;
    this.identity = identity;
    this._ready = true;
    this._attempt = 0;
    this._cause = null;
    this.onState({ state: "connected", identity: this.identity });
    for (const entry of this._waiting.splice(0)) {
      clearTimeout(entry.timer);
      this._send(socket, entry);
    }
  }

  async _subscribeOn(socket) {
    const { names } = this._sub;
    const since = this.version;
    const only = names ? { names } : {};
    const resume = since === null ? {} : { since, ...(this.epoch ? { epoch: this.epoch } : {}) };
    let reply;
    try {
      reply = await this._call(socket, "subscribe", { ...only, ...resume });
    } catch (error) {
      // NOTE: too many changes to replay: start afresh, and tell the caller to fetch again.
      if (since === null || !(error instanceof RequestError) || error.code !== "invalid_request") {
        throw error;
      }
      reply = await this._call(socket, "subscribe", only);
      this._resync(reply.version);
    }
    this.epoch = reply.epoch;
    if (this.version === null) this.version = reply.version;
    return reply;
  }

  _onClose(socket, event) {
    if (socket !== this._socket) return;
    this._socket = null;
    this._ready = false;
    this.identity = null;
    for (const entry of this._pending.values()) {
      if (READS.has(entry.type) && this._wanted) this._wait(entry);
      else entry.reject(new Error("connection lost before the reply: the outcome is unknown"));
    }
    this._pending.clear();
    const { code } = event;
    const reason = event.reason || CLOSE_NAMES[code] || "";
    const refreshable = code === 1008 && reason === "token expired" && this.tokenProvider;
    if (!this._wanted || !(RECONNECT.has(code) || refreshable)) {
      this._wanted = false;
      this._stop(code, this._stopReason || reason);
      return;
    }
    // NOTE: a retry that fails before it connects closes with 1006: the drop that started the
    //   retries (a 1012 restart, say) stays the cause, unless a server closes with another code.
    if (!this._cause || code !== 1006) this._cause = { code, reason };
    const delay = Math.random() * Math.min(this.cap, this.base * 2 ** this._attempt++);
    this.onState({ state: "reconnecting", delay, attempt: this._attempt, ...this._cause });
    this._retry = setTimeout(() => this._open(), delay * 1000);
  }

  _stop(code, reason) {
    this._stopReason = null;
    for (const entry of this._waiting.splice(0)) {
      clearTimeout(entry.timer);
      entry.reject(new Error("not connected"));
    }
    this.onState({ state: "stopped", code, reason });
  }

  _onMessage(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (message === null || typeof message !== "object") return;
    const entry = this._pending.get(message.id);
    if (entry && ("result" in message || "error" in message)) {
      this._pending.delete(message.id);
      const { error } = message;
      if (error) entry.reject(new RequestError(error.code, error.message, error.retry_after));
      else entry.resolve(message.result);
    } else if (message.type === "token.expiring") {
      this._refresh(message.expires_at);
    } else if (message.type === "resync") {
      this._resync(message.version);
    } else if (this._sub && String(message.type).startsWith("report.")) {
      if (this.version !== null && message.version <= this.version) return; // seen already
      this.version = message.version;
      this._sub.onChange(message);
    }
  }

  _resync(version) {
    this.version = version;
    this._sub?.onResync(version);
    this.onState({ state: "resynced", version });
  }

  async _refresh(expiresAt) {
    if (!this.tokenProvider) {
      this.onExpiring(expiresAt, null);
      return;
    }
    try {
      await this.auth(await this.tokenProvider());
    } catch (error) {
      this.onExpiring(expiresAt, error);
    }
  }

  // -- requests ----------------------------------------------------------------------------

  _call(socket, type, fields) {
    return new Promise((resolve, reject) => this._send(socket, { type, fields, resolve, reject }));
  }

  _send(socket, entry) {
    const id = this._nextId++;
    this._pending.set(id, entry);
    socket.send(JSON.stringify({ id, type: entry.type, ...entry.fields }));
  }

  _wait(entry) {
    entry.timer = setTimeout(() => {
      this._waiting = this._waiting.filter((other) => other !== entry);
      entry.reject(new Error(`not connected within ${this.timeout} s`));
    }, this.timeout * 1000);
    this._waiting.push(entry);
  }
}
