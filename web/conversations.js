// The conversations this browser can take up again. The tab's current one lives in sessionStorage, so a
// reload resumes it; every conversation with a message is listed in localStorage, to switch between.
// Resume tokens are secrets: they live here and in the `resume` frame only, never in a URL, the DOM or
// a log line.

const CURRENT_KEY = "gateway.current";
const LIST_KEY = "gateway.conversations";
const OUTCOMES_KEY = "gateway.outcomes";
const MAX_LISTED = 50; // the oldest fall off the list (the server forgets them after its session TTL)
const MAX_OUTCOMES = 200; // per conversation: the most recent replies' meta lines
const FAILURES_KEY = "gateway.failures";
const MAX_FAILURES = 20; // per conversation: the most recent turns that ended in an error
const MAX_FAILED_TEXT_CHARS = 2000; // of each one's message (the page shows it again, the model never saw it)
const MAX_TITLE_CHARS = 60;

// The current conversation: {session, token, lastSeq, pending}, where `pending` is the turn whose reply
// is still streaming ({id, text, seq: its `accepted` frame's seq, or null before that}), or null.
export function loadCurrent() {
  const current = readJson(sessionStorage, CURRENT_KEY);
  return current?.session && current.token ? current : null;
}

export function saveCurrent(current) {
  sessionStorage.setItem(CURRENT_KEY, JSON.stringify(current));
}

export function clearCurrent() {
  sessionStorage.removeItem(CURRENT_KEY);
}

// Every listed conversation, the most recently used first: {session, token, title, time, lastSeq, pending}.
export function listConversations() {
  const list = readJson(localStorage, LIST_KEY);
  return Array.isArray(list) ? list.filter((entry) => entry?.session && entry.token) : [];
}

// Add the conversation to the list, or update its entry: `fields` are merged and its time is now.
export function remember(current, fields = {}) {
  const list = listConversations();
  const old = list.find((entry) => entry.session === current.session);
  const entry = { title: "Untitled", ...old, ...fields, session: current.session, token: current.token,
    lastSeq: current.lastSeq, pending: current.pending, time: Date.now() };
  const rest = list.filter((other) => other.session !== current.session);
  writeList([entry, ...rest].slice(0, MAX_LISTED));
}

// Keep the listed entry's place in the stream (for a later switch back) without moving it up the list.
export function sync(current) {
  const list = listConversations();
  const entry = list.find((other) => other.session === current.session);
  if (!entry) return;
  Object.assign(entry, { lastSeq: current.lastSeq, pending: current.pending });
  writeList(list);
}

export function isListed(session) {
  return listConversations().some((entry) => entry.session === session);
}

export function drop(session) {
  writeList(listConversations().filter((entry) => entry.session !== session));
  for (const key of [OUTCOMES_KEY, FAILURES_KEY]) {
    const kept = readBySession(key);
    delete kept[session];
    localStorage.setItem(key, JSON.stringify(kept));
  }
}

// How each reply ended ({reason, line}: its `done` frame's finish reason and the meta line shown under it),
// by session and turn id: the server's history keeps a reply's text, not its `done`, so a reload or a
// switch shows the meta lines from here.
export function rememberOutcome(session, turnId, outcome) {
  keep(OUTCOMES_KEY, session, turnId, outcome, MAX_OUTCOMES);
}

export function outcomeOf(session, turnId) {
  return readBySession(OUTCOMES_KEY)[session]?.[turnId] ?? null;
}

// Turns that ended in an error ({turnId, after, text, code, message, sent}), by session: the server's
// history holds no such turn (the model never sees it), so a reload or a switch shows each again from
// here, after the item it followed (`after`: that item's id, null for none). `sent`: false when the
// server refused it before accepting it.
export function rememberFailure(session, failure) {
  const text = failure.text.length > MAX_FAILED_TEXT_CHARS ? `${failure.text.slice(0, MAX_FAILED_TEXT_CHARS - 1)}…` : failure.text;
  keep(FAILURES_KEY, session, failure.turnId, { ...failure, text }, MAX_FAILURES);
}

// The session's failed turns, oldest first.
export function failuresOf(session) {
  return Object.values(readBySession(FAILURES_KEY)[session] ?? {});
}

// Under `key`, per session and turn id, the `limit` most recent values.
function keep(key, session, turnId, value, limit) {
  if (!session || !turnId) return;
  const bySession = readBySession(key);
  const kept = Object.entries(bySession[session] ?? {}).filter(([id]) => id !== turnId).slice(1 - limit);
  delete bySession[session]; // re-added last: the least recently used conversations go first
  bySession[session] = Object.fromEntries([...kept, [turnId, value]]);
  const sessions = Object.keys(bySession);
  for (const old of sessions.slice(0, Math.max(0, sessions.length - MAX_LISTED))) delete bySession[old];
  localStorage.setItem(key, JSON.stringify(bySession));
}

function readBySession(key) {
  const kept = readJson(localStorage, key);
  return kept !== null && typeof kept === "object" && !Array.isArray(kept) ? kept : {};
}

export function titleOf(text) {
  const line = text.trim().split("\n")[0] || "Images";
  return line.length > MAX_TITLE_CHARS ? `${line.slice(0, MAX_TITLE_CHARS - 1)}…` : line;
}

function writeList(list) {
  localStorage.setItem(LIST_KEY, JSON.stringify(list));
}

function readJson(storage, key) {
  try {
    return JSON.parse(storage.getItem(key) ?? "null");
  } catch {
    return null;
  }
}
