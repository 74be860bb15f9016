// How the connection stands, shown twice: a short state in the header (announced politely) and, while
// not connected, a banner with the reason, a real countdown to the next try, and what the user can do
// (enter an API key, try now).

const TICK_MS = 250;

const SHORT_STATES = {
  connected: "Connected", connecting: "Connecting…", loading: "Model loading", failed: "Model failed to load",
  "key-missing": "API key needed", "key-wrong": "API key refused", "key-unusable": "API key unusable",
  origin: "Origin refused", "taken-over": "Open elsewhere",
};

export class ConnectionBanner {
  // `ui` holds the header's status elements and the banner's; `keyOf()` is the key stored now.
  constructor(ui, keyOf) {
    this.ui = ui;
    this.keyOf = keyOf;
    this.retryAt = null; // when the connection tries again
    this.timer = null;
    this.everConnected = false;
  }

  show({ kind, text, retry, retryAt }) {
    const problem = kind !== "connected" && kind !== "connecting";
    this.ui.status.dataset.state = problem ? (retry ? "reconnecting" : "blocked") : kind;
    this.ui.statusText.textContent = SHORT_STATES[kind] ?? "Disconnected";
    this.everConnected ||= kind === "connected";
    if (kind === "connected") this.ui.connection.hidden = true;
    if (problem) this.showProblem(kind, text, retry);
    this.retryAt = kind === "connecting" ? null : retryAt ?? null;
    this.tick();
  }

  showProblem(kind, text, retry) {
    const { connection, connectionText, keyForm, retryNow, apiKey } = this.ui;
    const wasHidden = connection.hidden;
    connection.hidden = false;
    connection.dataset.problem = kind;
    if (connectionText.textContent !== text) connectionText.textContent = text; // announced only when it changes
    const needsKey = kind.startsWith("key-");
    keyForm.hidden = !needsKey;
    retryNow.hidden = needsKey;
    retryNow.textContent = kind === "taken-over" ? "Continue here" : retry ? "Try now" : "Try again";
    if (needsKey && (wasHidden || document.activeElement !== apiKey)) {
      apiKey.value = this.keyOf();
      apiKey.focus();
      apiKey.select();
    }
  }

  // "Reconnecting in 3 s…", counted down for real while the connection waits.
  tick() {
    clearTimeout(this.timer);
    const line = this.ui.connectionRetry;
    if (this.ui.connection.hidden) return;
    if (this.retryAt === null) {
      line.textContent = this.ui.status.dataset.state === "connecting" ? "Trying now…" : "";
      return;
    }
    const seconds = Math.max(1, Math.ceil((this.retryAt - Date.now()) / 1000));
    line.textContent = `${this.everConnected ? "Reconnecting" : "Trying again"} in ${seconds} s…`;
    this.timer = setTimeout(() => this.tick(), TICK_MS);
  }
}
