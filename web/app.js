// The browser client: one gateway session at a time, shown as a chat. The server keeps history per
// connection, so after a reconnect the page says plainly that a new session began and keeps the old
// messages visible but marked as past.

import { nameImages } from "./attachments.js";
import { ConnectionBanner } from "./banner.js";
import { encode } from "./codec.js";
import { Composer } from "./composer.js";
import { Connection } from "./connection.js";
import { Conversation, element } from "./messages.js";
import { boundSettings, forgetSettings, loadSettings, saveSettings, SettingsForm } from "./settings.js";

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), statusText: $("status-text"), model: $("model"), demoBadge: $("demo-badge"),
  newChat: $("new-chat"), confirmNewChat: $("confirm-new-chat"), settingsToggle: $("settings-toggle"),
  connection: $("connection"), connectionText: $("connection-text"), connectionRetry: $("connection-retry"),
  keyForm: $("key-form"), apiKey: $("api-key"), retryNow: $("retry-now"), forgetKey: $("forget-key"),
  settings: $("settings"), settingsState: $("settings-state"),
  welcomeImages: $("welcome-images"), welcomeDemo: $("welcome-demo"),
  main: document.querySelector("main"), messages: $("messages"),
  composer: $("composer"), attachments: $("attachments"), note: $("composer-note"),
  fileInput: $("file-input"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
  dropOverlay: $("drop-overlay"),
};

const conversation = new Conversation(ui.messages, ui.main);
const composer = new Composer(ui, () => state.limits);
const settingsForm = new SettingsForm(ui.settings);
const connection = new Connection({
  onFrame: (frame) => HANDLERS[frame?.type]?.(frame), // frame types added later are ignored, not fatal
  onState: (connectionState) => {
    banner.show(connectionState);
    updateControls();
  },
  onServerStatus: (status) => { if (state.demoFromReady === undefined) showDemo(status.demo); },
  onLost: interruptRunningTurn,
  onBadFrame: (err) => conversation.addError("bad_frame", `could not decode a frame from the server: ${err.message}`),
});
const banner = new ConnectionBanner(ui, () => connection.key);

const state = {
  session: null, // the open connection's server session id
  sessionsSeen: 0, // more than one means the page has reconnected at least once
  limits: {},
  vision: true,
  demoFromReady: undefined, // `ready.demo`, when the server sends it; else /status says
  running: null, // the turn waiting for or streaming its reply
  turns: new Map(), // turn id -> {id, text, attachments, user, reply, accepted} in this session
  configure: null, // {id, values, saved} of the configure frame awaiting its answer
  nextId: 0,
};

// ---- the demo badge ---------------------------------------------------------------------------

function showDemo(demo) {
  ui.demoBadge.hidden = !demo;
  ui.welcomeDemo.hidden = !demo;
}

// ---- server frames ------------------------------------------------------------------------------

const HANDLERS = {
  ready: onReady,
  accepted: onAccepted,
  queued: onQueued,
  token: onToken,
  done: onDone,
  error: onError,
  history: onHistory,
  configured: onConfigured,
  reset: onReset,
  closing: (frame) => conversation.addNotice(`The server is closing this connection: ${frame.reason} (${frame.code}).`),
  pong: () => {},
};

function onReady(frame) {
  if (state.sessionsSeen > 0) markSessionBreak();
  state.sessionsSeen += 1;
  state.session = frame.session;
  state.limits = frame.limits ?? {};
  state.vision = Boolean(frame.vision);
  if ("demo" in frame) showDemo((state.demoFromReady = Boolean(frame.demo)));
  ui.status.dataset.session = frame.session;
  ui.model.textContent = `${frame.model} · session ${frame.session}`;
  ui.welcomeImages.hidden = !state.vision;
  settingsForm.showLimits(frame.defaults ?? {}, state.limits);
  applySavedSettings();
  connection.send({ type: "history" }); // show whatever the server holds for this session
  updateControls();
}

function applySavedSettings() {
  const saved = loadSettings();
  if (!saved) return;
  const { settings, lowered } = boundSettings(saved, state.limits);
  if (lowered) {
    saveSettings(settings);
    conversation.addNotice(`Max tokens was lowered to ${settings.max_tokens} to fit this model's context window.`);
  }
  settingsForm.fill(settings);
  sendConfigure(settings, true);
}

function onAccepted(frame) {
  const turn = state.turns.get(frame.id);
  if (turn) turn.accepted = true;
  if (frame.dropped_turns > 0) {
    conversation.addNotice(`${frame.dropped_turns} oldest exchange(s) no longer fit the context window; the model will not see them.`);
  }
}

function onQueued(frame) {
  // Every slot on the model is busy: say where this turn waits until its first token arrives.
  if (state.running?.id === frame.id) ui.statusText.textContent = `Connected · waiting, position ${frame.position}`;
}

function onToken(frame) {
  if (ui.statusText.textContent.includes("waiting")) ui.statusText.textContent = "Connected";
  state.turns.get(frame.id)?.reply.append(frame.text);
}

function onDone(frame) {
  const turn = state.turns.get(frame.id);
  if (turn) {
    turn.reply.set(frame.text); // the server's final text is authoritative
    turn.reply.finish(frame.finish_reason, describeDone(frame));
  }
  if (state.running?.id === frame.id) state.running = null;
  updateControls();
}

function onError(frame) {
  const turn = state.turns.get(frame.id);
  const message = turn ? nameImages(frame.message, turn.attachments) : frame.message;
  if (frame.id && frame.id === state.configure?.id) return onConfigureRefused(frame.code, message);
  const shown = conversation.addError(frame.code, message);
  // A turn the server refused before accepting it is over before it began: it goes back to the composer.
  if (turn && !turn.accepted) {
    restoreComposer(turn);
    shown.append(element("span", { className: "restored", textContent: "Not sent to the model: your message is back in the message box." }));
  }
}

function onHistory(frame) {
  // Only fill an empty session: anything shown already came from this same connection.
  if (state.turns.size > 0 || state.running || !frame.turns?.length) return;
  for (const entry of frame.turns) {
    if (entry.role === "user") conversation.addUser(entry.text, entry.images ?? []);
    else conversation.addReply(entry.text).finish(entry.partial ? "cancelled" : "stop", entry.partial ? "cancelled" : "");
  }
}

function onConfigured(frame) {
  if (frame.id !== state.configure?.id) return;
  saveSettings(state.configure.values);
  state.configure = null;
  ui.settingsState.textContent = "Applied to this session.";
  settingsForm.showLimits(frame.defaults ?? {}, state.limits);
}

function onConfigureRefused(code, message) {
  // Saved settings the server refuses would be refused again after every reconnect: drop them.
  if (state.configure.saved) forgetSettings();
  ui.settingsState.textContent = `Not applied (${code}): ${message}`;
  state.configure = null;
}

function onReset() {
  conversation.clear();
  state.turns.clear();
}

// ---- turns --------------------------------------------------------------------------------------

function sendTurn() {
  const text = composer.text;
  const attachments = composer.attachments;
  if (!text.trim() && attachments.length === 0) return;
  if (state.running) return note("Wait for the reply to finish, or press Stop.");
  if (!connection.connected) return note("Not connected; your message is kept here until the connection is back.");
  const problem = checkTurn(text, attachments);
  if (problem) return note(problem);
  const id = `turn-${Date.now().toString(36)}-${state.nextId++}`;
  const images = attachments.length ? attachments.map((a) => a.data) : undefined;
  const payload = encode({ type: "turn", id, text, images });
  if (payload.length > (state.limits.max_frame_bytes ?? Infinity)) {
    return note(`This message is ${payload.length} bytes; the server accepts at most ${state.limits.max_frame_bytes}.`);
  }
  connection.send(payload);
  const turn = { id, text, attachments, user: conversation.addUser(text, attachments), reply: conversation.addReply(), accepted: false };
  turn.reply.streaming();
  state.turns.set(id, turn);
  state.running = turn;
  composer.take();
  updateControls();
  conversation.scrollToBottom();
}

function checkTurn(text, attachments) {
  const limits = state.limits;
  if (attachments.length > 0 && !state.vision) return "The served model is text-only; remove the images.";
  if (text.length > (limits.max_text_chars ?? Infinity)) return `The text is ${text.length} characters; the limit is ${limits.max_text_chars}.`;
  if (attachments.length > (limits.max_images_per_turn ?? Infinity)) return `At most ${limits.max_images_per_turn} images per message.`;
  return null;
}

function restoreComposer(turn) {
  turn.user.remove();
  turn.reply.item.remove();
  state.turns.delete(turn.id);
  if (state.running === turn) state.running = null;
  updateControls();
  composer.restore(turn.text, turn.attachments);
}

function interruptRunningTurn() {
  state.session = null;
  if (!state.running) return;
  state.running.reply.finish("interrupted", "interrupted: the connection was lost");
  state.running = null;
}

function stopTurn() {
  if (!state.running || !connection.send({ type: "cancel", id: state.running.id })) return;
  ui.stop.disabled = true; // one cancel is enough; a second would find no running turn
}

async function newChat() {
  if (!conversation.isEmpty || state.running) {
    ui.confirmNewChat.returnValue = "";
    ui.confirmNewChat.showModal();
    const answer = await new Promise((resolve) => ui.confirmNewChat.addEventListener("close", () => resolve(ui.confirmNewChat.returnValue), { once: true }));
    if (answer !== "confirm") return;
  }
  // Without a connection there is no server history to clear; the next session starts empty anyway.
  if (!connection.send({ type: "reset" })) onReset();
  ui.prompt.focus();
}

function describeDone(frame) {
  const { usage, timing } = frame;
  return [
    FINISH_LABELS[frame.finish_reason] ?? frame.finish_reason,
    `${usage.completion_tokens} tokens (prompt ${usage.prompt_tokens}, total ${usage.total_tokens})`,
    timing.ttft_ms == null ? "no first token" : `first token ${Math.round(timing.ttft_ms)} ms`,
    `${timing.tokens_per_s.toFixed(1)} tokens/s`,
    `${Math.round(timing.total_ms)} ms`,
  ].join(" · ");
}

const FINISH_LABELS = { stop: "finished", length: "stopped at max tokens", cancelled: "cancelled", error: "failed" };

function markSessionBreak() {
  const old = conversation.markStale();
  state.turns.clear();
  conversation.addNotice(
    old
      ? "Reconnected: a new session started. The server does not keep the messages above; the model will not see them."
      : "Reconnected: a new session started.",
    "session-break",
  );
}

// ---- settings -----------------------------------------------------------------------------------

function sendConfigure(values, saved = false) {
  const id = `configure-${state.nextId++}`;
  state.configure = { id, values, saved };
  if (connection.send({ type: "configure", id, ...values })) {
    ui.settingsState.textContent = "Applying…";
  } else {
    state.configure = null;
    saveSettings(values);
    ui.settingsState.textContent = "Saved; applied when connected.";
  }
}

function toggleSettings() {
  const open = ui.settings.hidden;
  ui.settings.hidden = !open;
  ui.settingsToggle.setAttribute("aria-expanded", String(open));
  ui.forgetKey.hidden = !connection.key;
  if (open) ui.settings.elements.system.focus();
}

// ---- controls -----------------------------------------------------------------------------------

function note(text) {
  composer.note(text);
}

function updateControls() {
  const running = Boolean(state.running);
  ui.send.hidden = running;
  ui.stop.hidden = !running;
  ui.stop.disabled = !running;
  ui.send.disabled = !connection.connected;
  const canAttach = state.vision && (state.limits.max_images_per_turn ?? 1) > 0;
  ui.fileInput.disabled = !canAttach;
  ui.fileInput.labels[0].classList.toggle("disabled", !canAttach);
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
  ui.prompt.addEventListener("input", () => note(""));
  ui.stop.addEventListener("click", stopTurn);
  ui.newChat.addEventListener("click", newChat);
  ui.settingsToggle.addEventListener("click", toggleSettings);
  ui.settings.addEventListener("submit", (event) => {
    event.preventDefault();
    const { values, problem } = settingsForm.read();
    if (values) sendConfigure(values);
    else ui.settingsState.textContent = `Not applied. ${problem}`;
  });
  ui.forgetKey.addEventListener("click", () => {
    connection.setKey("");
    ui.forgetKey.hidden = true;
    ui.settingsState.textContent = "API key forgotten.";
  });
  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    connection.setKey(ui.apiKey.value.trim());
  });
  ui.retryNow.addEventListener("click", () => connection.connect());
  composer.wire();
  window.addEventListener("online", () => {
    if (connection.waiting) connection.connect(); // no point waiting out the backoff once the network is back
  });
}

settingsForm.fill(loadSettings() ?? {});
wire();
updateControls();
connection.connect();
