// Editing the conversation from the page: regenerate a reply, flip between versions (`switch`), edit a
// message, delete, branch into a new chat (`fork`), and a stopped reply cut to what was shown
// (`truncate`). The server holds the tree: after each change the page shows the `history` it answers
// with (asked for once a regenerated or edited reply has ended), so the screen shows the server's path.

import { listConversations, remember, rememberFailure } from "./conversations.js";
import { editForm, itemControls } from "./item_controls.js";
import { userItem } from "./messages.js";

export class Editor {
  // hooks: send(frame) -> false when not connected; newTurnId(); beginTurn(turn, text?); dropTurn(turn);
  // check(text) -> what stops a message from being sent, or null;
  // running() -> the turn running, or null; settled() (the ended turns leave the page's live ones);
  // note(text); outcomeOf(turnId); failures() -> the turns that ended in an error (conversations.js);
  // session() -> the current session's id; openChat(session).
  constructor(conversation, hooks) {
    this.conversation = conversation;
    this.hooks = hooks;
    this.awaited = new Map(); // id of a frame sent -> its type, until its answer (`history`, `forked`)
    this.images = new Map(); // user item id -> its thumbnails, kept across re-renders of the history
    this.missingImages = false;
    this.nextId = 0;
    conversation.onItem = (item, entry) => this.decorate(item, entry);
  }

  // Give a shown message or reply (`entry`: its history entry) its id and its controls.
  decorate(item, entry) {
    if (!entry.item_id || (entry.role !== "user" && entry.role !== "assistant")) return;
    item.dataset.itemId = entry.item_id;
    if (entry.role === "user") this.keepImages(item, entry.item_id);
    item.querySelector(".item-actions")?.remove();
    const controls = itemControls(entry, (action, itemId) => this.act(action, item, itemId));
    const copy = item.querySelector(":scope > .reply-footer > .copy");
    if (copy) copy.after(controls); // a reply's beside its Copy button, before the meta line
    else item.append(controls);
  }

  // A history without image bytes shows chips: the thumbnails this page showed for the item go back in.
  keepImages(item, itemId) {
    const shown = item.querySelector(":scope > .images");
    if (shown?.querySelector("img")) return void this.images.set(itemId, shown);
    const kept = this.images.get(itemId);
    if (kept) shown?.replaceWith(kept);
    else if (shown) this.missingImages = true;
  }

  act(action, item, itemId) {
    if (this.hooks.running()) return this.hooks.note("Wait for the reply to finish, or press Stop.");
    if (action === "edit") return this.openEditor(item);
    if (action === "regenerate") return this.regenerate(item, itemId);
    if (!this.request({ type: action, item_id: itemId })) this.notConnected();
  }

  regenerate(item, itemId) {
    const id = this.hooks.newTurnId();
    if (!this.hooks.send({ type: "regenerate", id, item_id: itemId })) return this.notConnected();
    const after = this.lastItemId();
    removeFrom(item); // the new reply takes the old one's place; the history brings the old one back as 1/2
    this.startTurn({ id, text: "", user: null, kind: "regenerate", after });
  }

  openEditor(item) {
    const text = item.querySelector(":scope > .text");
    const actions = item.querySelector(".item-actions");
    const opener = document.activeElement; // the Edit button, when pressed from the keyboard or a click
    const close = () => {
      form.remove();
      text.hidden = actions.hidden = false;
      opener?.focus();
    };
    const { form, area } = editForm(text.textContent, (edited) => this.sendEdit(item, edited), close);
    text.hidden = actions.hidden = true;
    text.after(form);
    area.focus();
  }

  sendEdit(item, text) {
    if (this.hooks.running()) return this.hooks.note("Wait for the reply to finish, or press Stop.");
    const images = item.querySelector(":scope > .images");
    if (!text.trim() && !images) return this.hooks.note("The message is empty.");
    const problem = this.hooks.check(text);
    if (problem) return this.hooks.note(problem);
    const id = this.hooks.newTurnId();
    if (!this.hooks.send({ type: "edit", id, item_id: item.dataset.itemId, text, respond: true })) return this.notConnected();
    const edited = userItem(text, []);
    if (images) edited.append(images); // an edit keeps the message's images
    const after = this.lastItemId();
    removeFrom(item);
    this.conversation.append(edited);
    this.startTurn({ id, text, user: edited, kind: "edit", after });
  }

  // The last item of the server's path as shown: where a refused edit or regenerate leaves it.
  lastItemId() {
    return [...this.conversation.list.querySelectorAll("[data-item-id]")].at(-1)?.dataset.itemId ?? null;
  }

  // `after`: the item the server's path ends with before the turn (kept with its error if it is refused).
  startTurn({ id, text, user, kind, after }) {
    const turn = { id, text, attachments: [], user, reply: this.conversation.addReply(), accepted: false, kind, after };
    this.hooks.beginTurn(turn, kind === "edit" ? text : null); // an edit's message is shown again after a reload
  }

  // `accepted` names the turn's items.
  accepted(frame, turn) {
    turn.itemId = frame.item_id;
    if (turn.user && frame.item_id) this.keepImages(turn.user, frame.item_id); // an edit's, or a turn's, shown once more
  }

  // Stop pressed: the reply keeps what is on screen now, whatever streams before the `done`.
  stopping(turn) {
    turn.reply.render();
    turn.shown = Array.from(turn.reply.raw).length;
  }

  // A turn's `done`: the text to show (a stopped reply's, cut to what was shown, and `truncate` sent so the
  // model's next prompt holds only that); the items get their controls.
  ended(frame, turn) {
    const chars = Array.from(frame.text);
    const cut = turn.shown !== undefined && chars.length > turn.shown;
    const text = cut ? chars.slice(0, turn.shown).join("") : frame.text;
    if (!frame.reply_id) return text;
    if (cut) this.request({ type: "truncate", item_id: frame.reply_id, chars: turn.shown });
    // a new version (or one picked up after a reload): the history counts them; a watch's reply is none
    else if (turn.kind && !turn.watch) this.request({ type: "history" });
    else {
      if (turn.user && turn.itemId) this.decorate(turn.user, { role: "user", item_id: turn.itemId, sibling_ids: [turn.itemId] });
      this.decorate(turn.reply.item, { role: "assistant", item_id: frame.reply_id, sibling_ids: [frame.reply_id] });
    }
    return text;
  }

  // An `error` answering a frame of ours, or a regenerate or edit refused before it began: shown, and the
  // page shows the server's history again (in place of what it took away for the refused turn). A refused
  // turn's error is remembered as a failed turn's is, so a reload shows it again where it was.
  refused(frame, turn) {
    const type = this.awaited.get(frame.id);
    this.awaited.delete(frame.id);
    if (!type && !(turn?.kind && !turn.accepted)) return false;
    if (turn) this.hooks.dropTurn(turn);
    if (type !== "history") this.request({ type: "history" });
    const shown = this.conversation.addError(frame.code, frame.message);
    if (!turn) return true;
    shown.dataset.failedTurn = turn.id; // the history's re-render shows the remembered one in its place
    const failure = { turnId: turn.id, after: turn.after ?? null, text: "", code: frame.code, message: frame.message, sent: false };
    rememberFailure(this.hooks.session(), failure);
    return true;
  }

  // A `history` answering one of ours: true when it was (and is now shown).
  history(frame) {
    if (!this.awaited.delete(frame.id)) return false;
    this.render(frame.turns);
    return true;
  }

  // The forked session is listed under Chats and opened (a new socket resumes it).
  forked(frame) {
    if (!this.awaited.delete(frame.id)) return;
    const title = listConversations().find((entry) => entry.session === this.hooks.session())?.title ?? "Untitled";
    remember({ session: frame.session, token: frame.resume_token, lastSeq: 0, pending: null }, { title: `${title} (branch)` });
    this.hooks.openChat(frame.session);
  }

  // The path in place of the messages shown; a reply still streaming stays below it, and so do the
  // notices and errors after the last message. A control that had the focus keeps it (as one of its kind).
  render(entries) {
    const running = this.hooks.running();
    const live = running ? [running.user, running.reply.item] : [];
    const nodes = [...this.conversation.list.children];
    const focus = focusedControl(this.conversation.list, nodes);
    const last = nodes.findLastIndex((node) => node.matches(".message:not(.error)") && !live.includes(node));
    for (const node of nodes.slice(0, last + 1)) if (!live.includes(node)) node.remove();
    this.missingImages = false;
    const shown = entries.filter((entry) => entry.id !== running?.id);
    this.conversation.insertHistory(shown, this.conversation.list.firstChild, this.hooks.outcomeOf, this.hooks.failures());
    if (focus) refocus(this.conversation.list.children[focus.index], focus.label);
    this.hooks.settled();
    if (this.missingImages) this.request({ type: "history", include_images: true });
  }

  // A new page or session: nothing of the old one is awaited or kept.
  clear() {
    for (const images of this.images.values()) images.querySelectorAll("img").forEach((img) => URL.revokeObjectURL(img.src));
    this.images.clear();
    this.awaited.clear();
  }

  request(frame) {
    const id = `${frame.type}-edit-${this.nextId++}`;
    if (!this.hooks.send({ ...frame, id })) return false;
    this.awaited.set(id, frame.type);
    return true;
  }

  notConnected() {
    this.hooks.note("Not connected: try again once the connection is back.");
  }
}

// An item and everything after it leave the page.
function removeFrom(item) {
  while (item.nextSibling) item.nextSibling.remove();
  item.remove();
}

// Where the focus is, when on an item's control: the item's place in the list, the control's name.
function focusedControl(list, nodes) {
  const control = document.activeElement;
  if (!list.contains(control) || !control.closest(".item-actions")) return null;
  return { index: nodes.indexOf(control.closest("li")), label: control.getAttribute("aria-label") };
}

// The control of that name on the item now at that place (a keyboard user flips on and on), else its
// first one that works (the arrow just pressed may be disabled now).
function refocus(item, label) {
  const controls = [...(item?.querySelectorAll(".item-actions button:not(:disabled)") ?? [])];
  (controls.find((control) => control.getAttribute("aria-label") === label) ?? controls[0])?.focus();
}
