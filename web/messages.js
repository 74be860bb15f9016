// The conversation on screen: the user's messages as plain text with thumbnails; replies rendered as
// markdown while they stream (at most once per animation frame), each with a copy button; the tool
// calls a reply made, each with its result once the history has one; notices.

import { copyButton } from "./clipboard.js";
import { renderMarkdown } from "./markdown.js";

const NEAR_BOTTOM_PX = 48;

export function element(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

export function thumbnail(attachment) {
  return element("img", { src: attachment.url, alt: attachment.name, className: "thumb" });
}

export class Conversation {
  constructor(list, scroller) {
    this.list = list;
    this.scroller = scroller;
  }

  get isEmpty() {
    return this.list.childElementCount === 0;
  }

  // `images`: attachments with object URLs, or the server's history entries (with or without bytes).
  addUser(text, images = []) {
    return this.append(userItem(text, images));
  }

  addReply(text = "") {
    const reply = new Reply(this);
    this.append(reply.item);
    if (text) reply.set(text);
    return reply;
  }

  // Entries of the server's history, placed before `reference` (null: at the end). A tool entry (a
  // result) goes under the call it answers; one whose call is not shown stands on its own. `outcomeOf(id)`
  // is how a reply ended ({reason, line}) when the page kept its `done`, else null; `failures`: the turns
  // that ended in an error, which the page kept (conversations.js), each shown where it was.
  insertHistory(entries, reference, outcomeOf = () => null, failures = []) {
    const fragment = document.createDocumentFragment();
    for (const entry of entries) {
      if (entry.role === "user") fragment.append(this.placed(userItem(entry.text, entry.images ?? []), entry));
      else if (entry.role === "tool") {
        const call = findCall(fragment, entry.call_id) ?? findCall(this.list, entry.call_id);
        if (call) showResult(call, entry.text);
        else fragment.append(orphanResult(entry));
      } else fragment.append(this.placed(finishedReply(this, entry, outcomeOf(entry.id)).item, entry));
    }
    const placing = new Set(failures.map((failure) => failure.turnId));
    while (placing.has(reference?.dataset?.failedTurn)) reference = reference.nextSibling; // it leaves, to its place
    placeFailures(this.list, fragment, failures);
    this.list.insertBefore(fragment, reference);
    this.scrollToBottom();
  }

  // A history entry's message or reply, given its controls by `onItem(item, entry)` (edit.js) if set.
  placed(item, entry) {
    this.onItem?.(item, entry);
    return item;
  }

  addNotice(text, className = "") {
    return this.append(element("li", { className: `notice ${className}`.trim(), textContent: text }));
  }

  addError(code, message) {
    return this.append(errorItem(code, message));
  }

  // A conversation the server could not resume: what is shown stays, visibly past.
  markStale() {
    const old = this.list.querySelectorAll("li:not(.stale)");
    old.forEach((item) => item.classList.add("stale"));
    return old.length;
  }

  clear() {
    this.list.querySelectorAll("img").forEach((img) => URL.revokeObjectURL(img.src));
    this.list.replaceChildren();
  }

  append(item) {
    const follow = this.nearBottom();
    this.list.append(item);
    if (follow) this.scrollToBottom();
    return item;
  }

  nearBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_BOTTOM_PX;
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }
}

class Reply {
  constructor(conversation) {
    this.conversation = conversation;
    this.raw = ""; // the reply's markdown source, as the model wrote it
    this.frame = null; // a pending render
    this.body = element("div", { className: "text" });
    this.meta = element("span", { className: "meta" });
    this.calls = element("div", { className: "tool-calls", hidden: true });
    const copy = copyButton("Copy", "Copy reply", () => this.raw);
    const footer = element("div", { className: "reply-footer" }, [copy, this.meta]);
    this.item = element("li", { className: "message assistant" }, [roleLabel("Assistant"), this.body, this.calls, footer]);
  }

  // A `tool_call` frame, or a history entry's call: {call_id, name, arguments}. Shown once per call_id
  // (a resumed reply may replay its frames).
  addToolCall(call) {
    if (findCall(this.calls, call.call_id)) return;
    this.calls.hidden = false;
    this.calls.append(toolCallItem(call));
  }

  addToolResult(callId, text) {
    const call = findCall(this.calls, callId);
    if (call) showResult(call, text);
  }

  append(delta) {
    this.raw += delta;
    this.frame ??= requestAnimationFrame(() => this.render());
  }

  set(text) {
    this.raw = text;
    this.render();
  }

  render() {
    cancelAnimationFrame(this.frame);
    this.frame = null;
    const follow = this.conversation.nearBottom();
    renderMarkdown(this.body, this.raw);
    if (follow) this.conversation.scrollToBottom();
  }

  streaming(note = "") {
    this.item.setAttribute("aria-busy", "true"); // screen readers wait for the finished reply
    this.setMeta(note);
  }

  finish(reason, description) {
    this.render();
    this.item.dataset.finishReason = reason;
    this.item.removeAttribute("aria-busy");
    this.setMeta(description);
  }

  // On a narrow screen the meta line wraps under the copy button, growing the reply after its last
  // render: a conversation that followed the reply keeps following it, so the line is not left below.
  setMeta(text) {
    const follow = this.conversation.nearBottom();
    this.meta.textContent = text;
    if (follow) this.conversation.scrollToBottom();
  }
}

function errorItem(code, message) {
  const item = element("li", { className: "message error" }, [element("strong", { textContent: code }), `: ${message}`]);
  item.setAttribute("role", "alert");
  return item;
}

// The id of the last item before `node` that the server's history holds, or null: where a turn that
// ended in an error was (conversations.js rememberFailure).
export function itemIdBefore(node) {
  for (let item = node?.previousElementSibling; item; item = item.previousElementSibling) {
    if (item.dataset.itemId) return item.dataset.itemId;
  }
  return null;
}

// Each failed turn after the item it followed, when that item is among `fragment`'s (first, when it
// followed none), in the order they happened; shown once: what the page shows of the turn already leaves.
function placeFailures(list, fragment, failures) {
  const lastAfter = new Map(); // an item's id -> the last node placed after it
  for (const failure of failures) {
    list.querySelectorAll(`[data-failed-turn="${CSS.escape(failure.turnId)}"]`).forEach((node) => node.remove());
    const anchor = failure.after === null ? null : fragment.querySelector(`[data-item-id="${CSS.escape(failure.after)}"]`);
    if (failure.after !== null && !anchor) continue; // it followed an item of another path
    const error = errorItem(failure.code, failure.message);
    if (!failure.sent) error.append(element("span", { className: "restored", textContent: "Not sent to the model." }));
    const nodes = failure.sent && failure.text ? [userItem(failure.text, []), error] : [error];
    nodes.forEach((node) => (node.dataset.failedTurn = failure.turnId));
    const previous = lastAfter.get(failure.after) ?? anchor;
    if (previous) previous.after(...nodes);
    else fragment.prepend(...nodes);
    lastAfter.set(failure.after, error);
  }
}

// A user's message, not yet placed: `images` as for addUser.
export function userItem(text, images) {
  const children = [roleLabel("You"), element("div", { className: "text", textContent: text })];
  if (images.length) children.push(element("div", { className: "images" }, images.map(imageOrChip)));
  return element("li", { className: "message user" }, children);
}

function finishedReply(conversation, entry, outcome) {
  const reply = new Reply(conversation);
  reply.raw = entry.text;
  renderMarkdown(reply.body, entry.text);
  for (const call of entry.tool_calls ?? []) reply.addToolCall(call);
  const called = (entry.tool_calls ?? []).length > 0;
  const reason = entry.partial ? "cancelled" : called ? "tool_calls" : "stop";
  reply.item.dataset.finishReason = outcome?.reason ?? reason;
  reply.meta.textContent = outcome?.line ?? (entry.partial ? "cancelled" : "");
  return reply;
}

// ---- tool calls: names, ids and arguments are the model's text, so they only ever go in as text ----

// A call: its function's name, its id (small), its arguments pretty-printed as JSON (as sent, when they
// do not parse), and a place for its result.
function toolCallItem({ call_id: callId, name, arguments: args }) {
  const title = element("div", { className: "tool-call-head" }, [
    element("span", { className: "tool-label", textContent: "Tool call" }),
    element("code", { className: "tool-name", textContent: String(name ?? "") }),
    element("small", { className: "tool-call-id", textContent: String(callId ?? "") }),
  ]);
  const argsBlock = codeBlock("tool-args", prettyJson(args));
  const item = element("div", { className: "tool-call" }, [title, argsBlock]);
  item.dataset.callId = String(callId ?? "");
  item.setAttribute("role", "group");
  item.setAttribute("aria-label", `Tool call ${name ?? ""}`);
  return item;
}

function showResult(call, text) {
  call.querySelector(".tool-result")?.remove();
  call.append(element("div", { className: "tool-result" }, [
    element("div", { className: "tool-label", textContent: "Result" }),
    codeBlock("tool-result-text", prettyJson(text)),
  ]));
}

// A result whose call is not on the page (e.g. its reply scrolled out of the server's history).
function orphanResult(entry) {
  const head = element("div", { className: "tool-call-head" }, [
    element("span", { className: "tool-label", textContent: "Tool result" }),
    element("small", { className: "tool-call-id", textContent: String(entry.call_id ?? "") }),
  ]);
  const item = element("li", { className: "message tool" }, [roleLabel("Tool"), head, codeBlock("tool-result-text", prettyJson(entry.text))]);
  item.dataset.callId = String(entry.call_id ?? "");
  return item;
}

function codeBlock(className, text) {
  return element("pre", { className }, [element("code", { textContent: text })]);
}

// JSON text re-indented; anything else as it came.
function prettyJson(text) {
  const raw = String(text ?? "");
  try {
    const value = JSON.parse(raw);
    return value !== null && typeof value === "object" ? JSON.stringify(value, null, 2) : raw;
  } catch {
    return raw;
  }
}

function findCall(root, callId) {
  return [...root.querySelectorAll(".tool-call")].find((call) => call.dataset.callId === String(callId)) ?? null;
}

function roleLabel(text) {
  return element("div", { className: "role", textContent: text });
}

// An attachment (with its object URL), or a history image: a thumbnail from its bytes, else a chip.
function imageOrChip(image) {
  if (image.url) return thumbnail(image);
  const name = `${image.format} ${image.width}×${image.height}`;
  if (!image.data) return element("span", { className: "chip", textContent: name });
  const url = URL.createObjectURL(new Blob([image.data], { type: `image/${image.format}` }));
  return thumbnail({ url, name }); // revoked by clear()
}
