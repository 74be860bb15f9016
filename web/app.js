// The browser client: one WebSocket session speaking msgpack, shown as a chat.
// Every connection is a new server session (the server keeps history per connection), so after a
// reconnect the page says so plainly and keeps the old messages visible but marked as past.

import { decode, encode } from "./msgpack.js";

const MSGPACK_SUBPROTOCOL = "gateway.msgpack";
const RECONNECT_BASE_MS = 500;
const RECONNECT_MAX_MS = 15_000;
const SETTINGS_KEY = "gateway.settings";
const NEAR_BOTTOM_PX = 48;

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), statusText: $("status-text"), model: $("model"),
  newChat: $("new-chat"), settingsToggle: $("settings-toggle"),
  settings: $("settings"), settingsState: $("settings-state"),
  system: $("system"), temperature: $("temperature"), topP: $("top_p"), maxTokens: $("max_tokens"),
  main: document.querySelector("main"), messages: $("messages"),
  composer: $("composer"), attachments: $("attachments"), note: $("composer-note"),
  fileInput: $("file-input"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
  dropOverlay: $("drop-overlay"),
};

const state = {
  socket: null,
  session: null, // the open connection's server session id; null while disconnected
  sessionsSeen: 0, // more than one means the page has reconnected at least once
  limits: {},
  vision: true,
  reconnectAttempt: 0,
  reconnectTimer: null,
  running: null, // the turn waiting for or streaming its reply: {id, accepted}
  turns: new Map(), // turn id -> {user, reply, text} elements of the current session
  attachments: [], // {name, data: Uint8Array, url} waiting to be sent
  configureId: null, // id of the configure frame awaiting its answer
  nextId: 0,
};

// ---- connection ---------------------------------------------------------------------------------

function connect() {
  clearTimeout(state.reconnectTimer);
  setStatus("connecting", "Connecting…");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // The subprotocol asks for msgpack from the first frame on (the server's default is JSON).
  const socket = new WebSocket(`${scheme}://${location.host}/ws`, [MSGPACK_SUBPROTOCOL]);
  socket.binaryType = "arraybuffer";
  socket.onmessage = (event) => receive(event.data);
  socket.onclose = (event) => onClosed(socket, event);
  state.socket = socket;
}

function onClosed(socket, event) {
  if (state.socket !== socket) return;
  state.socket = null;
  state.session = null;
  if (state.running) {
    finishReply(state.running.id, "interrupted", "interrupted: the connection was lost");
    state.running = null;
  }
  // Exponential backoff with jitter, so a restarted server is not hit by every page at once.
  const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** state.reconnectAttempt) * (0.8 + Math.random() * 0.4);
  state.reconnectAttempt += 1;
  const why = event.code === 1000 || event.code === 1006 ? "" : ` (${event.code}${event.reason ? ": " + event.reason : ""})`;
  setStatus("reconnecting", `Disconnected${why}. Reconnecting in ${Math.ceil(delay / 1000)} s…`);
  state.reconnectTimer = setTimeout(connect, delay);
  updateControls();
}

function send(frame) {
  if (!isConnected()) return false;
  state.socket.send(encode(frame));
  return true;
}

function isConnected() {
  return state.session !== null && state.socket?.readyState === WebSocket.OPEN;
}

function receive(data) {
  let frame;
  try {
    frame = typeof data === "string" ? JSON.parse(data) : decode(new Uint8Array(data));
  } catch (err) {
    showError("bad_frame", `could not decode a frame from the server: ${err.message}`);
    return;
  }
  const handler = HANDLERS[frame?.type];
  if (handler) handler(frame); // frame types added to the protocol later are ignored, not fatal
}

function setStatus(kind, text) {
  ui.status.dataset.state = kind;
  ui.statusText.textContent = text;
}

// ---- server frames ------------------------------------------------------------------------------

const HANDLERS = {
  ready: onReady,
  accepted: onAccepted,
  token: onToken,
  done: onDone,
  error: onError,
  history: onHistory,
  configured: onConfigured,
  reset: onReset,
  pong: () => {},
  queued: onQueued,
  closing: onClosing,
};

function onReady(frame) {
  if (state.sessionsSeen > 0) markSessionBreak();
  state.sessionsSeen += 1;
  state.session = frame.session;
  state.limits = frame.limits ?? {};
  state.vision = Boolean(frame.vision);
  state.reconnectAttempt = 0;
  ui.status.dataset.session = frame.session;
  setStatus("connected", "Connected");
  ui.model.textContent = `${frame.model} · session ${frame.session}`;
  showDefaults(frame.defaults ?? {});
  if (loadSettings()) applySettings();
  send({ type: "history" }); // show whatever the server holds for this session
  updateControls();
}

function onAccepted(frame) {
  if (state.running?.id === frame.id) state.running.accepted = true;
  if (frame.dropped_turns > 0) {
    addNotice(`${frame.dropped_turns} oldest exchange(s) no longer fit the context window; the model will not see them.`);
  }
}

function onQueued(frame) {
  // Every slot on the model is busy: say where this turn waits until its first token arrives.
  if (state.running?.id === frame.id) setStatus("connected", `Connected · waiting, position ${frame.position}`);
}

function onClosing(frame) {
  // The server says why it is about to close; the reconnect logic takes it from there.
  addNotice(`The server is closing this connection: ${frame.reason} (${frame.code}).`);
}

function onToken(frame) {
  if (ui.statusText.textContent.includes("waiting")) setStatus("connected", "Connected");
  const turn = state.turns.get(frame.id);
  if (!turn) return;
  const follow = isNearBottom();
  turn.text.appendData(frame.text); // appending to one text node keeps long replies cheap
  if (follow) scrollToBottom();
}

function onDone(frame) {
  const turn = state.turns.get(frame.id);
  if (turn) {
    turn.text.data = frame.text; // the server's final text is authoritative
    finishReply(frame.id, frame.finish_reason, describeDone(frame));
  }
  if (state.running?.id === frame.id) state.running = null;
  updateControls();
}

function onError(frame) {
  showError(frame.code, frame.message);
  if (frame.id && frame.id === state.configureId) {
    ui.settingsState.textContent = `Not applied: ${frame.code}`;
    state.configureId = null;
  }
  // An error for a turn the server never accepted means that turn is over before it began.
  if (frame.id && state.running?.id === frame.id && !state.running.accepted) {
    const turn = state.turns.get(frame.id);
    turn?.user.classList.add("failed");
    turn?.reply.remove();
    state.turns.delete(frame.id);
    state.running = null;
    updateControls();
  }
}

function onHistory(frame) {
  // Only fill an empty session: anything shown already came from this same connection.
  if (state.turns.size > 0 || state.running || !frame.turns?.length) return;
  for (const entry of frame.turns) {
    if (entry.role === "user") {
      const chips = (entry.images ?? []).map((i) => `[${i.format} ${i.width}×${i.height}]`);
      addMessage("user", [entry.text, ...chips].filter(Boolean).join(" "));
    } else {
      const reply = addMessage("assistant", entry.text);
      if (entry.partial) reply.dataset.finishReason = "cancelled";
    }
  }
}

function onConfigured(frame) {
  if (frame.id !== state.configureId) return;
  state.configureId = null;
  ui.settingsState.textContent = "Applied to this session.";
  showDefaults(frame.defaults ?? {});
}

function onReset() {
  clearConversation();
}

// ---- turns --------------------------------------------------------------------------------------

function sendTurn() {
  const text = ui.prompt.value;
  const images = state.attachments.map((a) => a.data);
  if (!text.trim() && images.length === 0) return;
  if (state.running) return note("Wait for the reply to finish, or press Stop.");
  if (!isConnected()) return note("Not connected; your message is kept here until the connection is back.");
  const problem = checkTurn(text, images);
  if (problem) return showError("too_large", problem);
  const id = `turn-${Date.now().toString(36)}-${state.nextId++}`;
  const payload = encode({ type: "turn", id, text, images: images.length ? images : undefined });
  if (payload.length > (state.limits.max_frame_bytes ?? Infinity)) {
    return showError("too_large", `this message is ${payload.length} bytes; the server accepts at most ${state.limits.max_frame_bytes}`);
  }
  state.socket.send(payload);
  const user = addMessage("user", text, state.attachments);
  const reply = addMessage("assistant", "");
  reply.setAttribute("aria-busy", "true"); // screen readers wait for the finished reply
  state.turns.set(id, { user, reply, text: reply.querySelector(".text").firstChild });
  reply.dataset.turnId = id;
  state.running = { id, accepted: false };
  ui.prompt.value = "";
  state.attachments = []; // their object URLs now belong to the sent message's thumbnails
  renderAttachments();
  updateControls();
  scrollToBottom();
}

function checkTurn(text, images) {
  const limits = state.limits;
  if (images.length > 0 && !state.vision) return "the served model is text-only; remove the images";
  if (text.length > (limits.max_text_chars ?? Infinity)) return `the text is ${text.length} characters; the limit is ${limits.max_text_chars}`;
  if (images.length > (limits.max_images_per_turn ?? Infinity)) return `at most ${limits.max_images_per_turn} images per message`;
  return null;
}

function stopTurn() {
  if (!state.running || !send({ type: "cancel", id: state.running.id })) return;
  ui.stop.disabled = true; // one cancel is enough; a second would find no running turn
}

function newChat() {
  // Without a connection there is no server history to clear; the next session starts empty anyway.
  if (!send({ type: "reset" })) clearConversation();
}

function describeDone(frame) {
  const { usage, timing } = frame;
  const parts = [
    FINISH_LABELS[frame.finish_reason] ?? frame.finish_reason,
    `${usage.completion_tokens} tokens (prompt ${usage.prompt_tokens}, total ${usage.total_tokens})`,
    timing.ttft_ms == null ? "no first token" : `first token ${Math.round(timing.ttft_ms)} ms`,
    `${timing.tokens_per_s.toFixed(1)} tokens/s`,
    `${Math.round(timing.total_ms)} ms`,
  ];
  return parts.join(" · ");
}

const FINISH_LABELS = {
  stop: "finished",
  length: "stopped at max tokens",
  cancelled: "cancelled",
  error: "failed",
};

// ---- settings -----------------------------------------------------------------------------------

function loadSettings() {
  try {
    return JSON.parse(localStorage.getItem(SETTINGS_KEY) ?? "null");
  } catch {
    return null;
  }
}

function readSettingsForm() {
  const number = (input) => (Number.isFinite(input.valueAsNumber) ? input.valueAsNumber : undefined);
  return {
    system: ui.system.value, // "" clears the system prompt
    temperature: number(ui.temperature),
    top_p: number(ui.topP),
    max_tokens: number(ui.maxTokens),
  };
}

function fillSettingsForm(settings) {
  ui.system.value = settings.system ?? "";
  ui.temperature.value = settings.temperature ?? "";
  ui.topP.value = settings.top_p ?? "";
  ui.maxTokens.value = settings.max_tokens ?? "";
}

function applySettings() {
  const settings = loadSettings();
  state.configureId = `configure-${state.nextId++}`;
  if (send({ type: "configure", id: state.configureId, ...settings })) {
    ui.settingsState.textContent = "Applying…";
  } else {
    state.configureId = null;
    ui.settingsState.textContent = "Saved; applied when connected.";
  }
}

function showDefaults(defaults) {
  // The server's values are placeholders, so an empty field visibly means "server default".
  ui.temperature.placeholder = defaults.temperature ?? "";
  ui.topP.placeholder = defaults.top_p ?? "";
  ui.maxTokens.placeholder = defaults.max_tokens ?? "";
  // A reply cannot be longer than the context window, whatever the server's max_tokens limit allows.
  const ceiling = Math.min(state.limits.max_tokens ?? Infinity, state.limits.context_tokens ?? Infinity);
  if (Number.isFinite(ceiling)) ui.maxTokens.max = ceiling;
}

function toggleSettings() {
  const open = ui.settings.hidden;
  ui.settings.hidden = !open;
  ui.settingsToggle.setAttribute("aria-expanded", String(open));
  if (open) ui.system.focus();
}

// ---- attachments --------------------------------------------------------------------------------

async function addFiles(files) {
  const max = state.limits.max_images_per_turn ?? Infinity;
  for (const file of files) {
    if (!file.type.startsWith("image/")) {
      note(`${file.name} is not an image.`);
    } else if (state.attachments.length >= max) {
      note(max === 0 ? "The served model is text-only." : `At most ${max} images per message.`);
      break;
    } else if (file.size > (state.limits.max_image_bytes ?? Infinity)) {
      note(`${file.name} is larger than the server's ${state.limits.max_image_bytes} byte limit.`);
    } else {
      const data = new Uint8Array(await file.arrayBuffer()); // sent as msgpack bin, never base64
      state.attachments.push({ name: file.name, data, url: URL.createObjectURL(file) });
    }
  }
  renderAttachments();
}

function removeAttachment(index) {
  const [removed] = state.attachments.splice(index, 1);
  URL.revokeObjectURL(removed.url);
  renderAttachments();
  ui.prompt.focus();
}

function renderAttachments() {
  ui.attachments.replaceChildren(
    ...state.attachments.map((a, index) => {
      const remove = element("button", { type: "button", className: "remove", textContent: "×" });
      remove.setAttribute("aria-label", `Remove ${a.name}`);
      remove.onclick = () => removeAttachment(index);
      return element("li", {}, [thumbnail(a), remove]);
    }),
  );
}

function thumbnail(attachment) {
  return element("img", { src: attachment.url, alt: attachment.name, className: "thumb" });
}

function hasFiles(event) {
  return event.dataTransfer && [...event.dataTransfer.types].includes("Files");
}

// ---- rendering ----------------------------------------------------------------------------------

function element(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function addMessage(role, text, attachments = []) {
  const follow = isNearBottom();
  const body = element("div", { className: "text" }, [document.createTextNode(text)]);
  const children = [element("div", { className: "role", textContent: role === "user" ? "You" : "Assistant" }), body];
  if (attachments.length) children.push(element("div", { className: "images" }, attachments.map(thumbnail)));
  if (role === "assistant") children.push(element("div", { className: "meta" }));
  const item = element("li", { className: `message ${role}` }, children);
  ui.messages.append(item);
  if (follow) scrollToBottom();
  return item;
}

function finishReply(id, reason, description) {
  const turn = state.turns.get(id);
  if (!turn) return;
  turn.reply.dataset.finishReason = reason;
  turn.reply.removeAttribute("aria-busy");
  turn.reply.querySelector(".meta").textContent = description;
}

function addNotice(text, className = "") {
  ui.messages.append(element("li", { className: `notice ${className}`.trim(), textContent: text }));
  scrollToBottom();
}

function showError(code, message) {
  const item = element("li", { className: "message error" }, [element("strong", { textContent: code }), `: ${message}`]);
  item.setAttribute("role", "alert");
  ui.messages.append(item);
  scrollToBottom();
}

function markSessionBreak() {
  const old = ui.messages.querySelectorAll("li:not(.stale)");
  old.forEach((item) => item.classList.add("stale"));
  state.turns.clear();
  addNotice(
    old.length
      ? "Reconnected: a new session started. The server does not keep the messages above; the model will not see them."
      : "Reconnected: a new session started.",
    "session-break",
  );
}

function clearConversation() {
  ui.messages.querySelectorAll("img").forEach((img) => URL.revokeObjectURL(img.src));
  ui.messages.replaceChildren();
  state.turns.clear();
}

function note(text) {
  ui.note.textContent = text;
}

function updateControls() {
  const running = Boolean(state.running);
  ui.send.hidden = running;
  ui.stop.hidden = !running;
  ui.stop.disabled = !running;
  ui.send.disabled = !isConnected();
  const canAttach = state.vision && (state.limits.max_images_per_turn ?? 1) > 0;
  ui.fileInput.disabled = !canAttach;
  ui.fileInput.labels[0].classList.toggle("disabled", !canAttach);
  if (!running && isConnected()) note("");
}

function isNearBottom() {
  const main = ui.main;
  return main.scrollHeight - main.scrollTop - main.clientHeight < NEAR_BOTTOM_PX;
}

function scrollToBottom() {
  ui.main.scrollTop = ui.main.scrollHeight;
}

// ---- wiring -------------------------------------------------------------------------------------

function wire() {
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    sendTurn();
  });
  ui.prompt.addEventListener("keydown", (event) => {
    // Enter sends; Shift+Enter (and Enter while an input method is composing) types a newline.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendTurn();
    }
  });
  ui.stop.addEventListener("click", stopTurn);
  ui.newChat.addEventListener("click", newChat);
  ui.settingsToggle.addEventListener("click", toggleSettings);
  ui.settings.addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(readSettingsForm()));
    applySettings();
  });
  ui.fileInput.addEventListener("change", async () => {
    await addFiles([...ui.fileInput.files]);
    ui.fileInput.value = ""; // so choosing the same file again fires `change` again
  });
  document.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files ?? [])].filter((f) => f.type.startsWith("image/"));
    if (files.length) {
      event.preventDefault();
      addFiles(files);
    }
  });
  document.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault(); // allows the drop
    ui.dropOverlay.hidden = false;
  });
  document.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) ui.dropOverlay.hidden = true; // left the window
  });
  document.addEventListener("drop", (event) => {
    ui.dropOverlay.hidden = true;
    if (!hasFiles(event)) return;
    event.preventDefault();
    addFiles([...event.dataTransfer.files]);
  });
  window.addEventListener("online", () => {
    if (!state.socket) connect(); // no point waiting out the backoff once the network is back
  });
}

fillSettingsForm(loadSettings() ?? {});
wire();
updateControls();
connect();
