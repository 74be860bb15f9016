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

  // `images`: attachments with object URLs, or the server's history metadata (no bytes).
  addUser(text, images = []) {
    const children = [roleLabel("You"), element("div", { className: "text", textContent: text })];
    if (images.length) children.push(element("div", { className: "images" }, images.map(imageOrChip)));
    return this.append(element("li", { className: "message user" }, children));
  }

  addReply(text = "") {
    const reply = new Reply(this);
    this.append(reply.item);
    if (text) reply.set(text);
    return reply;
  }

  addNotice(text, className = "") {
    return this.append(element("li", { className: `notice ${className}`.trim(), textContent: text }));
  }

  addError(code, message) {
    const item = element("li", { className: "message error" }, [element("strong", { textContent: code }), `: ${message}`]);
    item.setAttribute("role", "alert");
    return this.append(item);
  }

  // After a reconnect the server holds a new, empty session: what is shown stays, visibly past.
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

  streaming() {
    this.item.setAttribute("aria-busy", "true"); // screen readers wait for the finished reply
  }

  finish(reason, description) {
    this.render();
    this.item.dataset.finishReason = reason;
    this.item.removeAttribute("aria-busy");
    this.meta.textContent = description;
  }
}

function roleLabel(text) {
  return element("div", { className: "role", textContent: text });
}

function imageOrChip(image) {
  if (image.url) return thumbnail(image);
  return element("span", { className: "chip", textContent: `${image.format} ${image.width}×${image.height}` });
}
