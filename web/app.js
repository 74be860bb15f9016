// The browser client: one gateway session at a time, shown as a chat. The session outlives the socket:
// a reload or a lost connection resumes it (sessions.js), showing the history again and picking up a
// reply still streaming; the conversations kept in this browser are listed to switch between.

import { nameImages } from "./attachments.js";
import { ConnectionBanner } from "./banner.js";
import { ChatList } from "./chats.js";
import { encode } from "./codec.js";
import { Composer } from "./composer.js";
import { Connection } from "./connection.js";
import { failuresOf, listConversations, outcomeOf, rememberFailure, rememberOutcome, sync } from "./conversations.js";
import { liveElements, LiveView } from "./live.js";
import { Editor } from "./edit.js";
import { Conversation, element, itemIdBefore, userItem } from "./messages.js";
import { SessionLink } from "./sessions.js";
import { boundSettings, forgetSettings, loadSettings, saveSettings, SettingsForm } from "./settings.js";

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), statusText: $("status-text"), model: $("model"), demoBadge: $("demo-badge"),
  newChat: $("new-chat"), confirmNewChat: $("confirm-new-chat"), settingsToggle: $("settings-toggle"),
  chatsToggle: $("chats-toggle"), chats: $("chats"),
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
  onFrame: (frame) => {
    if (link.take(frame)) HANDLERS[frame?.type]?.(frame); // frame types added later are ignored, not fatal
  },
  onState: (connectionState) => {
    banner.show(connectionState);
    live.connectionChanged(connection.connected);
    updateControls();
  },
  onServerStatus: (status) => { if (state.demoFromReady === undefined) showDemo(status.demo); },
  onLost: pauseRunningTurn,
  onBadFrame: (err) => conversation.addError("bad_frame", `could not decode a frame from the server: ${err.message}`),
});
const banner = new ConnectionBanner(ui, () => connection.key);
const link = new SessionLink((frame) => connection.send(frame));
const chatList = new ChatList(ui.chats, switchChat);
const live = new LiveView(liveElements($), (frame) => connection.send(frame), () => state.limits);
const editor = new Editor(conversation, {
  send: (frame) => connection.send(frame),
  newTurnId, beginTurn, dropTurn, note,
  check: (text) => checkTurn(text, []),
  running: () => state.running,
  settled: () => state.turns.forEach((turn, id) => turn === state.running || state.turns.delete(id)),
  outcomeOf: (turnId) => outcomeOf(link.current?.session, turnId),
  failures: () => failuresOf(link.current?.session),
  session: () => link.current?.session,
  openChat: switchChat,
});

const state = {
  model: "", // the served model's id, from `ready`
  limits: {},
  vision: true,
  demoFromReady: undefined, // `ready.demo`, when the server sends it; else /status says
  running: null, // the turn waiting for or streaming its reply
  turns: new Map(), // turn id -> {id, text, attachments, user, reply, accepted} shown live (not from history)
  configure: null, // {id, values, saved} of the configure frame awaiting its answer
  historyId: null, // the id of the `history` request whose answer the page is waiting for
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
  resumed: onResumed,
  forgotten: onForgotten,
  accepted: onAccepted,
  queued: onQueued,
  token: onToken,
  tool_call: (frame) => adoptTurn(frame.id).reply.addToolCall(frame),
  done: onDone,
  error: onError,
  history: onHistory,
  forked: (frame) => editor.forked(frame),
  configured: onConfigured,
  closing: (frame) => conversation.addNotice(`The server is closing this connection: ${frame.reason} (${frame.code}).`),
  pong: () => {},
};

function onReady(frame) {
  state.limits = frame.limits ?? {};
  state.vision = Boolean(frame.vision);
  state.model = frame.model;
  if ("demo" in frame) showDemo((state.demoFromReady = Boolean(frame.demo)));
  ui.welcomeImages.hidden = !state.vision;
  settingsForm.showLimits(frame.defaults ?? {}, state.limits);
  if (!link.ready(frame)) startSession(); // else `resume` went out first, and `resumed` follows
  updateControls();
}

// The page holds `link.current` from now on: show its id, send the browser's settings.
function startSession() {
  const session = link.current.session;
  ui.status.dataset.session = session;
  ui.model.textContent = `${state.model} · session ${session}`;
  chatList.render(session);
  applySavedSettings();
}

function onResumed(frame) {
  const resumed = link.resumed(frame);
  if (!resumed) return;
  state.running?.reply.streaming(); // the reply goes on where it stopped
  if (resumed.render) {
    if (frame.gap) clearPage(); // frames are missing: the history shows what the server kept
    requestHistory();
  }
  startSession();
  updateControls();
}

function onResumeFailed() {
  if (state.running) state.running.reply.finish("interrupted", "interrupted: the conversation could not be resumed");
  state.running = null;
  state.turns.clear();
  conversation.markStale();
  conversation.addNotice("That conversation could not be resumed (it expired or was deleted), so it left the list; a new one started.", "session-break");
  startSession();
  updateControls();
}

// The store could not answer a `resume` or `forget` (the server goes on, without durable sessions for
// now): the conversation stays as it is, and a button sends the same request again.
function onStoreUnavailable(kind, message) {
  const shown = conversation.addError("store_unavailable", message);
  const label = kind === "resume" ? "Try resuming again" : "Try deleting again";
  const retry = element("button", { type: "button", className: "retry-store", textContent: label });
  retry.addEventListener("click", () => {
    const sent = kind === "resume" ? link.retryResume() : link.forget();
    if (sent) shown.remove();
    else note("Not connected: the page resumes the conversation when it reconnects.");
  });
  shown.append(" ", retry);
}

function requestHistory() {
  state.historyId = `history-${state.nextId++}`;
  connection.send({ type: "history", id: state.historyId, include_images: true });
}

// The fresh session `forgotten` announces has no resume token (only a `ready` carries one), so a reload
// could not bring it back: a new socket gets a session that can.
function onForgotten(frame) {
  if (link.forgotten(frame)) startNewChat();
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
  const turn = adoptTurn(frame.id);
  turn.accepted = true;
  live.markLiveTurn(turn.user, frame.live_frames);
  if (frame.initiated === "watch") adoptWatchTurn(turn);
  editor.accepted(frame, turn);
  link.turnAccepted(frame.id, frame.seq);
  chatList.render(link.current?.session);
  if (frame.dropped_turns > 0) {
    conversation.addNotice(`${frame.dropped_turns} oldest exchange(s) no longer fit the context window; the model will not see them.`);
  }
}

// A turn the server started for the watch is shown as a reply, but the composer stays free: a turn sent
// now cancels it on the server (a watch yields to the client).
function adoptWatchTurn(turn) {
  turn.watch = true;
  live.markWatchReply(turn.reply.item);
  if (state.running === turn) state.running = null;
  updateControls();
}

function onQueued(frame) {
  // Every slot on the model is busy: say where this turn waits until its first token arrives.
  if (state.running?.id === frame.id) ui.statusText.textContent = `Connected · waiting, position ${frame.position}`;
}

function onToken(frame) {
  if (ui.statusText.textContent.includes("waiting")) ui.statusText.textContent = "Connected";
  const turn = adoptTurn(frame.id);
  if (turn.shown === undefined) turn.reply.append(frame.text); // after Stop the reply shows no more
}

function onDone(frame) {
  const turn = adoptTurn(frame.id);
  turn.reply.set(editor.ended(frame, turn)); // the server's final text is authoritative (cut where Stop was pressed)
  const line = describeDone(frame);
  turn.reply.finish(frame.finish_reason, line);
  rememberOutcome(link.current?.session, frame.id, { reason: frame.finish_reason, line });
  link.turnEnded(frame.id);
  if (state.running?.id === frame.id) state.running = null;
  updateControls();
}

// A turn of this page, or one it did not send itself: after a reload or a switch, the server replays a
// reply still streaming from its `accepted` on, and the page shows it as it goes on.
function adoptTurn(id) {
  const known = state.turns.get(id);
  if (known) return known;
  const text = link.pendingText(id); // the message itself is in the history only once its reply ends
  const user = text === null ? null : conversation.addUser(text);
  // Replayed: it may be a regenerate or an edit, so its end shows the server's history again (edit.js).
  const turn = { id, text: text ?? "", attachments: [], user, reply: conversation.addReply(), accepted: true, kind: "replayed" };
  turn.reply.streaming();
  state.turns.set(id, turn);
  state.running = turn;
  updateControls();
  return turn;
}

function onError(frame) {
  if (link.resumeFailed(frame)) return onResumeFailed();
  if (live.takeError(frame)) return;
  const stalled = link.storeUnavailable(frame);
  if (stalled) return onStoreUnavailable(stalled, frame.message);
  const turn = state.turns.get(frame.id);
  if (editor.refused(frame, turn)) return;
  const message = turn ? nameImages(frame.message, turn.attachments) : frame.message;
  if (frame.id && frame.id === state.configure?.id) return onConfigureRefused(frame.code, message);
  const shown = conversation.addError(frame.code, message);
  if (turn) rememberFailedTurn(turn, frame.code, message, shown);
  // A turn the server refused before accepting it is over before it began: it goes back to the composer.
  if (turn && !turn.accepted) {
    restoreComposer(turn);
    shown.append(element("span", { className: "restored", textContent: "Not sent to the model: your message is back in the message box." }));
  }
}

// The history goes before the replies replayed meanwhile; a replayed turn that has ended since is in
// it too, and takes the history's message (with its images) in place of the one kept for the reload.
function onHistory(frame) {
  if (editor.history(frame) || frame.id !== state.historyId) return;
  state.historyId = null;
  const live = [...state.turns.values()];
  const first = live.find((turn) => turn.user)?.user ?? live[0]?.reply.item ?? null;
  const session = link.current?.session;
  const shown = frame.turns.filter((entry) => !state.turns.has(entry.id));
  conversation.insertHistory(shown, first, (id) => outcomeOf(session, id), failuresOf(session));
  for (const entry of frame.turns) {
    const turn = state.turns.get(entry.id);
    if (entry.role === "tool" && turn) turn.reply.addToolResult(entry.call_id, entry.text);
    if (entry.role !== "user" || !turn) continue;
    const item = userItem(entry.text, entry.images ?? []);
    turn.reply.item.before(item);
    turn.user?.remove();
    turn.user = item;
  }
}

// A turn that ended in an error is in no history (the model never sees it): the page keeps where it was,
// its message and its error, to show them there again after a reload or a re-render of the history.
function rememberFailedTurn(turn, code, message, shown) {
  const first = turn.user ?? turn.reply.item;
  const after = itemIdBefore(first);
  for (const node of [turn.user, turn.reply.item, shown]) if (node) node.dataset.failedTurn = turn.id;
  rememberFailure(link.current?.session, { turnId: turn.id, after, text: turn.text, code, message, sent: turn.accepted });
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

function clearPage() {
  conversation.clear();
  editor.clear();
  state.turns.clear();
  state.running = null;
  state.historyId = null;
  updateControls();
}

// ---- turns --------------------------------------------------------------------------------------

function sendTurn() {
  const text = composer.text;
  const attachments = composer.attachments;
  if (!text.trim() && attachments.length === 0) return;
  if (state.running) return note("Wait for the reply to finish, or press Stop.");
  if (!connection.connected || link.resuming) return note("Not connected; your message is kept here until the connection is back.");
  const problem = checkTurn(text, attachments);
  if (problem) return note(problem);
  const id = newTurnId();
  const images = attachments.length ? attachments.map((a) => a.data) : undefined;
  const payload = encode({ type: "turn", id, text, images, live: live.turnField() });
  if (payload.length > (state.limits.max_frame_bytes ?? Infinity)) {
    return note(`This message is ${payload.length} bytes; the server accepts at most ${state.limits.max_frame_bytes}.`);
  }
  connection.send(payload);
  beginTurn({ id, text, attachments, user: conversation.addUser(text, attachments), reply: conversation.addReply(), accepted: false }, text);
  composer.take();
}

function newTurnId() {
  return `turn-${Date.now().toString(36)}-${state.nextId++}`;
}

// A turn sent (`text`: its message, kept for a reload) is the running one until its `done`.
function beginTurn(turn, text = null) {
  if (text !== null) link.turnSent(turn.id, text);
  turn.reply.streaming();
  state.turns.set(turn.id, turn);
  state.running = turn;
  updateControls();
  conversation.scrollToBottom();
}

// A turn refused before it began is over.
function dropTurn(turn) {
  link.turnEnded(turn.id);
  state.turns.delete(turn.id);
  if (state.running === turn) state.running = null;
  updateControls();
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
  dropTurn(turn);
  composer.restore(turn.text, turn.attachments);
}

// The server goes on with a running turn for a while without us: its reply continues once resumed.
function pauseRunningTurn() {
  link.lost();
  state.running?.reply.streaming("connection lost; the reply continues when the page reconnects");
}

function stopTurn() {
  const turn = state.running;
  if (!turn || !connection.send({ type: "cancel", id: turn.id })) return;
  editor.stopping(turn); // the reply keeps what is shown now
  ui.stop.disabled = true; // one cancel is enough; a second would find no running turn
}

// New chat asks whether to keep this conversation under Chats or delete it on the server (`forget`,
// which needs the connection); an empty one is already new.
async function newChat() {
  if (conversation.isEmpty && !state.running) return ui.prompt.focus();
  if (!connection.connected || link.resuming) return note("Not connected: New chat waits for the connection.");
  ui.confirmNewChat.returnValue = "";
  ui.confirmNewChat.showModal();
  const answer = await new Promise((resolve) => ui.confirmNewChat.addEventListener("close", () => resolve(ui.confirmNewChat.returnValue), { once: true }));
  if (answer === "keep") startNewChat();
  else if (answer === "confirm" && !link.forget()) note("Not connected: deleting the conversation needs the server.");
  ui.prompt.focus();
}

// A new socket brings a fresh session; the one left stays listed under Chats.
function startNewChat() {
  link.leave();
  clearPage();
  chatList.render(null);
  connection.connect();
}

// Another conversation takes a new socket: `resume` is refused once a socket has run a turn, and on a
// socket that holds a session it would discard that one.
function switchChat(session) {
  const entry = listConversations().find((other) => other.session === session);
  if (!entry || session === link.current?.session) return;
  link.switchTo(entry);
  clearPage();
  chatList.render(session);
  connection.connect();
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

const FINISH_LABELS = { stop: "finished", length: "stopped at max tokens", cancelled: "cancelled", error: "failed", tool_calls: "called tools" };

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

function toggleChats() {
  const open = ui.chats.hidden;
  ui.chats.hidden = !open;
  ui.chatsToggle.setAttribute("aria-expanded", String(open));
  if (open) chatList.render(link.current?.session);
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
  ui.send.disabled = !connection.connected || Boolean(link.resuming);
  const canAttach = state.vision && (state.limits.max_images_per_turn ?? 1) > 0;
  ui.fileInput.disabled = !canAttach;
  ui.fileInput.labels[0].classList.toggle("disabled", !canAttach);
  live.enable(canAttach && connection.connected);
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
  ui.chatsToggle.addEventListener("click", toggleChats);
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
  live.wire();
  window.addEventListener("pagehide", () => link.current && sync(link.current)); // for a switch back later
  window.addEventListener("online", () => {
    if (connection.waiting) connection.connect(); // no point waiting out the backoff once the network is back
  });
}

settingsForm.fill(loadSettings() ?? {});
wire();
updateControls();
connection.connect();
