// The conversation on screen: the user's messages as plain text with thumbnails; replies rendered as
// markdown while they stream (at most once per animation frame), each with a copy button; notices.

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

  // Entries of the server's history, placed before `reference` (null: at the end).
  insertHistory(entries, reference) {
    const items = entries.map((entry) => (entry.role === "user" ? userItem(entry.text, entry.images ?? []) : finishedReply(this, entry).item));
    const fragment = document.createDocumentFragment();
    fragment.append(...items);
    this.list.insertBefore(fragment, reference);
    this.scrollToBottom();
  }

  addNotice(text, className = "") {
    return this.append(element("li", { className: `notice ${className}`.trim(), textContent: text }));
  }

  addError(code, message) {
    const item = element("li", { className: "message error" }, [element("strong", { textContent: code }), `: ${message}`]);
    item.setAttribute("role", "alert");
    return this.append(item);
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
    const copy = copyButton("Copy", "Copy reply", () => this.raw);
    const footer = element("div", { className: "reply-footer" }, [copy, this.meta]);
    this.item = element("li", { className: "message assistant" }, [roleLabel("Assistant"), this.body, footer]);
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
    this.meta.textContent = note;
  }

  finish(reason, description) {
    this.render();
    this.item.dataset.finishReason = reason;
    this.item.removeAttribute("aria-busy");
    this.meta.textContent = description;
  }
}

// A user's message, not yet placed: `images` as for addUser.
export function userItem(text, images) {
  const children = [roleLabel("You"), element("div", { className: "text", textContent: text })];
  if (images.length) children.push(element("div", { className: "images" }, images.map(imageOrChip)));
  return element("li", { className: "message user" }, children);
}

function finishedReply(conversation, entry) {
  const reply = new Reply(conversation);
  reply.raw = entry.text;
  renderMarkdown(reply.body, entry.text);
  reply.item.dataset.finishReason = entry.partial ? "cancelled" : "stop";
  reply.meta.textContent = entry.partial ? "cancelled" : "";
  return reply;
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
