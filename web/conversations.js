// The conversations this browser can take up again. The tab's current one lives in sessionStorage, so a
// reload resumes it; every conversation with a message is listed in localStorage, to switch between.
// Resume tokens are secrets: they live here and in the `resume` frame only, never in a URL, the DOM or
// a log line.

const CURRENT_KEY = "gateway.current";
const LIST_KEY = "gateway.conversations";
const OUTCOMES_KEY = "gateway.outcomes";
const MAX_LISTED = 50; // the oldest fall off the list (the server forgets them after its session TTL)
const MAX_OUTCOMES = 200; // per conversation: the most recent replies' meta lines
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
  const outcomes = readOutcomes();
  delete outcomes[session];
  localStorage.setItem(OUTCOMES_KEY, JSON.stringify(outcomes));
}

// How each reply ended ({reason, line}: its `done` frame's finish reason and the meta line shown under it),
// by session and turn id: the server's history keeps a reply's text, not its `done`, so a reload or a
// switch shows the meta lines from here.
export function rememberOutcome(session, turnId, outcome) {
  if (!session || !turnId) return;
  const outcomes = readOutcomes();
  const kept = Object.entries(outcomes[session] ?? {}).filter(([id]) => id !== turnId).slice(1 - MAX_OUTCOMES);
  delete outcomes[session]; // re-added last: the least recently used conversations go first
  outcomes[session] = Object.fromEntries([...kept, [turnId, outcome]]);
  const sessions = Object.keys(outcomes);
  for (const old of sessions.slice(0, Math.max(0, sessions.length - MAX_LISTED))) delete outcomes[old];
  localStorage.setItem(OUTCOMES_KEY, JSON.stringify(outcomes));
}

export function outcomeOf(session, turnId) {
  return readOutcomes()[session]?.[turnId] ?? null;
}

function readOutcomes() {
  const outcomes = readJson(localStorage, OUTCOMES_KEY);
  return outcomes !== null && typeof outcomes === "object" && !Array.isArray(outcomes) ? outcomes : {};
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
