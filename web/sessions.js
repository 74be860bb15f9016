// The page's hold on its server session across sockets. After each `ready` it resumes the tab's current
// conversation (else it keeps the socket's fresh session), counts the `seq` it has taken so that no frame
// is shown twice, and remembers the turn still streaming, so that after a reload the server replays that
// reply from its start and not only the part the old page had not seen.

import { clearCurrent, drop, isListed, loadCurrent, remember, saveCurrent, sync, titleOf } from "./conversations.js";

export class SessionLink {
  // send(frame) -> false when not connected.
  constructor(send) {
    this.send = send;
    this.current = loadCurrent(); // the tab's conversation: {session, token, lastSeq, pending}
    this.stream = null; // what the socket streams now: {session, lastSeq taken}
    this.fresh = null; // the socket's own session from its `ready`: {session, token}
    this.resuming = null; // the `resume` awaiting its answer: {id, session, lastSeq, render}
    this.shown = null; // the session whose conversation is on the page (none after a reload or a switch)
    this.forgetting = null; // the id of the `forget` awaiting its answer
    this.unresumed = null; // a `resume` the store could not answer (`store_unavailable`), to send again
    this.nextId = 0;
  }

  // A socket's `ready`: true when a `resume` went out, false when the fresh session was kept.
  ready(frame) {
    this.fresh = { session: frame.session, token: frame.resume_token };
    const current = this.current;
    if (!current || !frame.resume_token) return this.adoptFresh(); // a version 1 server cannot resume
    const render = this.shown !== current.session;
    const lastSeq = render && current.pending?.seq ? current.pending.seq - 1 : current.lastSeq;
    const id = `resume-${this.nextId++}`;
    this.resuming = { id, session: current.session, lastSeq, render };
    return this.send({ type: "resume", id, session: current.session, token: current.token, last_seq: lastSeq });
  }

  // False for a frame taken already (its seq at or below the last one taken): a replay never shows twice.
  // `ready` and `forgotten` begin the stream of a new session.
  take(frame) {
    if (typeof frame?.seq !== "number") return true;
    const starts = frame.type === "ready" || frame.type === "forgotten";
    if (starts && this.stream?.session !== frame.session) this.stream = { session: frame.session, lastSeq: 0 };
    if (!this.stream) return true;
    if (frame.seq <= this.stream.lastSeq) return false;
    this.stream.lastSeq = frame.seq;
    if (this.current?.session === this.stream.session) {
      this.current.lastSeq = frame.seq;
      saveCurrent(this.current);
    }
    return true;
  }

  // `resumed`: {render} says whether the page must show the history again (a reload, a switch, a gap).
  resumed(frame) {
    const resume = this.resuming;
    if (!resume) return null;
    this.resuming = null;
    this.stream = { session: frame.session, lastSeq: resume.lastSeq };
    this.current.lastSeq = resume.lastSeq;
    saveCurrent(this.current);
    if (isListed(this.current.session)) remember(this.current);
    const render = resume.render || frame.gap || this.shown !== frame.session;
    this.shown = frame.session;
    return { render };
  }

  // The session named in a refused `resume` (dropped from storage; the fresh one is kept), or null
  // when `frame` is some other error.
  resumeFailed(frame) {
    if (frame.code !== "resume_failed" || frame.id !== this.resuming?.id) return null;
    const failed = this.resuming.session;
    this.resuming = null;
    drop(failed);
    this.adoptFresh();
    return failed;
  }

  // `store_unavailable` answering our `resume` or `forget`: "resume" or "forget", no longer in flight so
  // the user may try it again (the page keeps the conversation meanwhile), or null for any other error.
  storeUnavailable(frame) {
    if (frame.code !== "store_unavailable" || !frame.id) return null;
    if (frame.id === this.resuming?.id) {
      this.unresumed = this.resuming;
      this.resuming = null;
      return "resume";
    }
    if (frame.id !== this.forgetting) return null;
    this.forgetting = null;
    return "forget";
  }

  // Send the `resume` the store could not answer again, on this socket; true when it went out.
  retryResume() {
    const last = this.unresumed;
    if (!last || !this.current || this.current.session !== last.session) return false;
    const id = `resume-${this.nextId++}`;
    const frame = { type: "resume", id, session: last.session, token: this.current.token, last_seq: last.lastSeq };
    if (!this.send(frame)) return false;
    this.resuming = { ...last, id };
    this.unresumed = null;
    return true;
  }

  adoptFresh() {
    this.current = { session: this.fresh.session, token: this.fresh.token, lastSeq: this.stream?.lastSeq ?? 0, pending: null };
    if (this.fresh.token) saveCurrent(this.current);
    else clearCurrent();
    this.shown = this.current.session;
    return false;
  }

  // Send `forget` for the current conversation; true when it went out.
  forget() {
    const id = `forget-${this.nextId++}`;
    if (!this.send({ type: "forget", id })) return false;
    this.forgetting = id;
    return true;
  }

  // `forgotten`: true when it answers our `forget`. The conversation leaves storage; the fresh session it
  // announces has no resume token (only a `ready` carries one), so the page reconnects for a new one.
  forgotten(frame) {
    if (frame.id !== this.forgetting) return false;
    this.forgetting = null;
    drop(this.current.session);
    this.leave();
    return true;
  }

  // Make a listed conversation the current one; the page then reconnects, and `ready` resumes it.
  switchTo(entry) {
    this.leave();
    this.current = { session: entry.session, token: entry.token, lastSeq: entry.lastSeq ?? 0, pending: entry.pending ?? null };
    saveCurrent(this.current);
    this.shown = null;
  }

  // Let go of the current conversation (it stays listed, if it is); the next `ready` starts a new one.
  leave() {
    if (this.current) sync(this.current);
    clearCurrent();
    this.current = null;
    this.shown = null;
  }

  // The socket is gone: a `resume` or `forget` in flight will get no answer.
  lost() {
    this.resuming = null;
    this.unresumed = null; // the next socket's `ready` resumes anyway
    this.forgetting = null;
    this.stream = null;
  }

  // ---- the turn still streaming, for a reload -----------------------------------------------------

  turnSent(id, text) {
    if (!this.current) return;
    this.current.pending = { id, text, seq: null };
    saveCurrent(this.current);
  }

  // The conversation is listed once a turn of it is accepted, titled by its first message.
  turnAccepted(id, seq) {
    const pending = this.current?.pending;
    if (pending?.id !== id) return;
    pending.seq = seq;
    saveCurrent(this.current);
    remember(this.current, isListed(this.current.session) ? {} : { title: titleOf(pending.text) });
  }

  turnEnded(id) {
    if (this.current?.pending?.id !== id) return;
    this.current.pending = null;
    saveCurrent(this.current);
    sync(this.current);
  }

  // The user's text of a turn this page did not send itself (a reload replays its reply), when known.
  pendingText(id) {
    return this.current?.pending?.id === id ? this.current.pending.text : null;
  }
}
