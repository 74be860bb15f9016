// The link to the gateway. A browser never sees the HTTP status of a refused WebSocket handshake, so
// before each attempt the page asks /status what would stand in the way (the model loading or failed,
// an API key missing or wrong, this page's origin refused, no free connection) and says so, instead of
// retrying blindly. The key travels as a `bearer.<key>` subprotocol; after a loss, retries back off.
// Where the operator names a token URL (the web app's own backend, in /status's `token_url`), the page
// asks it for a fresh scoped token before each attempt instead of needing a key typed in.

import { decode, encode } from "./codec.js";

const MSGPACK_SUBPROTOCOL = "gateway.msgpack";
const KEY_STORAGE = "gateway.apiKey";
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 15_000;
const LOADING_POLL_MS = 2_000;
// What an HTTP token (and so a subprotocol) may hold: a key with other characters cannot be sent.
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const ORDINARY_CLOSE_CODES = [1000, 1001, 1005, 1006];
const TAKEN_OVER = 4003; // another tab or client resumed this conversation: taking it back would ping-pong

// Each reason the page is not connected: what to tell the user, and whether waiting can help.
const PROBLEMS = {
  unreachable: { retry: true, text: () => "Cannot reach the server." },
  loading: { retry: true, text: () => "The model is still loading." },
  failed: { retry: true, text: (s) => `The model failed to load: ${s.error ?? "the server's log says why"}.` },
  draining: { retry: true, text: () => "The server is shutting down or restarting." },
  full: { retry: true, text: () => "The server has no free connection right now." },
  refused: { retry: true, text: () => "The server refused the connection." },
  "token-failed": { retry: true, text: () => "This site's backend gave no token to connect with." },
  lost: { retry: true, text: (s, event) => `The connection was lost${closeDetail(event)}.` },
  "taken-over": { retry: false, text: () => "This conversation was opened in another tab or window." },
  "key-missing": { retry: false, text: () => "This server needs an API key." },
  "key-wrong": { retry: false, text: () => "The server did not accept this API key." },
  "key-unusable": {
    retry: false,
    text: () => "A browser can only send a key made of letters, digits and !#$%&'*+-.^_`|~ (no spaces).",
  },
  origin: {
    retry: false,
    text: () => `The server does not accept pages from ${location.origin}. Open the page at the server's own ` +
      "address, or add this origin to the server's allowed_origins setting.",
  },
};

function closeDetail(event) {
  if (!event || ORDINARY_CLOSE_CODES.includes(event.code)) return "";
  return ` (${event.code}${event.reason ? `: ${event.reason}` : ""})`;
}

export class Connection {
  // onFrame(frame): every decoded server frame; onState(state): {kind, text, retry, retryAt};
  // onServerStatus(status): the /status answer; onLost(): a live connection has just ended.
  constructor({ onFrame, onState, onServerStatus, onLost, onBadFrame }) {
    Object.assign(this, { onFrame, onState, onServerStatus, onLost, onBadFrame });
    this.socket = null;
    this.ready = false; // the server's `ready` frame has arrived on this socket
    this.failures = 0; // consecutive failed attempts, for the backoff
    this.timer = null;
    this.attempt = 0; // attempts started; a slower, older one must not win
  }

  get key() {
    return sessionStorage.getItem(KEY_STORAGE) ?? "";
  }

  get connected() {
    return this.ready && this.socket?.readyState === WebSocket.OPEN;
  }

  get waiting() {
    return this.timer !== null;
  }

  setKey(key) {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    if (!this.connected) this.connect();
  }

  // Send a frame (or already encoded bytes); false when not connected.
  send(frame) {
    if (!this.connected) return false;
    this.socket.send(frame instanceof Uint8Array ? frame : encode(frame));
    return true;
  }

  async connect({ refused = false } = {}) {
    clearTimeout(this.timer);
    this.timer = null;
    this.abandon(); // a handshake still pending from an earlier attempt must not linger as a session
    const attempt = ++this.attempt;
    this.onState({ kind: "connecting", text: "Connecting…" });
    if (this.key && !TOKEN.test(this.key)) return this.problem("key-unusable");
    const status = await this.fetchStatus();
    if (attempt !== this.attempt) return;
    if (status) this.onServerStatus(status);
    const kind = problemOf(status) ?? (refused ? "refused" : null);
    if (kind) return this.problem(kind, status);
    const credential = this.key || (status?.token_url ? await this.fetchToken(status.token_url) : "");
    if (attempt !== this.attempt) return;
    if (credential === null) return this.problem("token-failed", status);
    this.open(credential);
  }

  // A fresh scoped token from the operator's backend (single use: one per attempt), or null.
  async fetchToken(url) {
    try {
      const response = await fetch(url, { method: "POST", credentials: "same-origin", cache: "no-store" });
      const token = response.ok ? (await response.json())?.token : null;
      return typeof token === "string" && TOKEN.test(token) ? token : null;
    } catch {
      return null;
    }
  }

  // The server's view (null when it has no /status: then just try), or undefined when unreachable.
  async fetchStatus() {
    const headers = this.key ? { Authorization: `Bearer ${this.key}` } : {};
    try {
      const response = await fetch(`/status?origin=${encodeURIComponent(location.origin)}`, { headers, cache: "no-store" });
      if (response.status === 404) return null;
      return response.ok ? await response.json() : undefined;
    } catch {
      return undefined;
    }
  }

  open(credential) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const protocols = [MSGPACK_SUBPROTOCOL, ...(credential ? [`bearer.${credential}`] : [])];
    const socket = new WebSocket(`${scheme}://${location.host}/ws`, protocols);
    socket.binaryType = "arraybuffer";
    socket.onmessage = (event) => this.receive(socket, event.data);
    socket.onclose = (event) => this.closed(socket, event);
    this.socket = socket;
    this.ready = false;
  }

  abandon() {
    const socket = this.socket;
    this.socket = null;
    this.ready = false;
    socket?.close();
  }

  receive(socket, data) {
    if (socket !== this.socket) return;
    let frame;
    try {
      frame = typeof data === "string" ? JSON.parse(data) : decode(new Uint8Array(data));
    } catch (err) {
      return this.onBadFrame(err);
    }
    if (frame?.type === "ready") {
      this.ready = true;
      this.failures = 0;
      this.onState({ kind: "connected", text: "Connected" });
    }
    this.onFrame(frame);
  }

  closed(socket, event) {
    if (socket !== this.socket) return;
    this.socket = null;
    if (this.ready) {
      this.ready = false;
      this.onLost();
      this.problem(event.code === TAKEN_OVER ? "taken-over" : "lost", null, event);
    } else {
      this.connect({ refused: true }); // the handshake failed: /status says why, if it can
    }
  }

  problem(kind, status = null, event = null) {
    const spec = PROBLEMS[kind];
    const state = { kind, text: spec.text(status ?? {}, event), retry: spec.retry, retryAt: null };
    if (spec.retry) {
      const delay = kind === "loading" ? LOADING_POLL_MS : this.backoff();
      state.retryAt = Date.now() + delay;
      this.timer = setTimeout(() => this.connect(), delay);
    }
    this.onState(state);
  }

  // Exponential with jitter, so a restarted server is not hit by every open page at the same moment.
  backoff() {
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** this.failures) * (0.8 + Math.random() * 0.4);
    this.failures += 1;
    return delay;
  }
}

function problemOf(status) {
  if (status === undefined) return "unreachable";
  if (status === null) return null;
  if (status.origin_allowed === false) return "origin";
  if (status.auth === "missing" && !status.token_url) return "key-missing";
  if (status.auth === "wrong") return "key-wrong";
  if (status.state === "ready") return null;
  return status.state in PROBLEMS ? status.state : "refused";
}
