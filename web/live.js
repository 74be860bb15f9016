// Live view: the camera or a shared screen streamed as `frame`s into the session's live window, at the
// rate the server's `ready.limits.max_frames_per_second` takes (faster ones it would only drop); turns sent
// while live ask about it, and a watch has the server ask on its own every few seconds.

import { element } from "./messages.js";

const MAX_SIDE = 640; // frames are scaled down to this: the model sees a few hundred pixels a side anyway
const JPEG_QUALITY = 0.8;
const ERROR_PREFIX = "live-"; // ids of this module's frames, so the server's errors about them come back here
const SOURCES = {
  camera: { label: "camera", open: () => navigator.mediaDevices.getUserMedia({ video: true, audio: false }) },
  screen: { label: "screen", open: () => navigator.mediaDevices.getDisplayMedia({ video: true, audio: false }) },
};

// The live section's elements in index.html, by id.
export function liveElements(byId) {
  return {
    camera: byId("live-camera"), screen: byId("live-screen"), stop: byId("live-stop"),
    indicator: byId("live-indicator"), indicatorText: byId("live-indicator-text"), preview: byId("live-preview"),
    watch: byId("watch"), watchText: byId("watch-text"), watchEvery: byId("watch-every"), watchToggle: byId("watch-toggle"),
    note: byId("live-note"),
  };
}

export class LiveView {
  // ui: the live section's elements; send(frame) -> bool (false while not connected); limitsOf() -> the server's limits
  constructor(ui, send, limitsOf) {
    this.ui = ui;
    this.send = send;
    this.limitsOf = limitsOf;
    this.source = null; // "camera" or "screen" while streaming
    this.stream = null;
    this.video = null;
    this.timer = null;
    this.capturing = false; // a frame is being encoded: the next tick skips rather than queue
    this.sent = 0;
    this.watching = false;
    this.still = false; // the last live turn's view had not changed since its latest frame came (`live_frames.still`)
    this.opening = 0; // bumped by each start and stop: a camera granted after a later click is let go
  }

  get active() {
    return this.source !== null;
  }

  // What a turn sent now carries in `live`: the source streamed, or nothing.
  turnField() {
    return this.active ? { source: this.source } : undefined;
  }

  wire() {
    this.ui.camera.addEventListener("click", () => this.start("camera"));
    this.ui.screen.addEventListener("click", () => this.start("screen"));
    this.ui.stop.addEventListener("click", () => this.stop());
    this.ui.watchToggle.addEventListener("click", () => (this.watching ? this.unwatch() : this.watch()));
  }

  // Enabled only where frames can be taken: a vision model, a connection, a browser with the API.
  enable(canStream) {
    const media = navigator.mediaDevices ?? {};
    this.ui.camera.disabled = !canStream || !media.getUserMedia;
    this.ui.screen.disabled = !canStream || !media.getDisplayMedia;
    this.ui.watchEvery.min = String(this.limitsOf().min_watch_every_s ?? 1);
  }

  async start(kind) {
    this.stop();
    const opening = ++this.opening;
    let stream;
    try {
      stream = await SOURCES[kind].open();
    } catch (err) {
      if (opening === this.opening) this.say(`Could not start the ${SOURCES[kind].label}: ${reason(err)}`, "problem");
      return;
    }
    if (opening !== this.opening) return stream.getTracks().forEach((track) => track.stop()); // another click since
    this.source = kind;
    this.stream = stream;
    this.video = element("video", { muted: true, playsInline: true });
    this.video.srcObject = stream;
    await this.video.play().catch(() => {}); // a muted video needs no gesture; frames are taken once it plays
    // The browser's own "Stop sharing" (or an unplugged camera) ends the track: the page stops with it.
    for (const track of stream.getVideoTracks()) track.addEventListener("ended", () => this.stop());
    const fps = Math.max(0.1, Number(this.limitsOf().max_frames_per_second) || 1);
    this.timer = setInterval(() => this.capture(), 1000 / fps);
    this.sent = 0;
    this.show();
  }

  stop() {
    this.opening += 1;
    if (!this.active) return;
    if (this.watching) this.unwatch();
    clearInterval(this.timer);
    for (const track of this.stream.getTracks()) track.stop();
    this.video.srcObject = null;
    this.source = this.stream = this.video = this.timer = null;
    this.still = false; // a new stream's view is not known to be still
    this.show();
    this.say("Live view stopped.");
  }

  async capture() {
    const video = this.video;
    if (this.capturing || !video || video.readyState < 2 || !video.videoWidth) return;
    this.capturing = true;
    try {
      const canvas = this.ui.preview;
      const scale = Math.min(1, MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
      canvas.width = Math.round(video.videoWidth * scale);
      canvas.height = Math.round(video.videoHeight * scale);
      canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
      if (!blob || this.video !== video) return; // stopped meanwhile
      const image = new Uint8Array(await blob.arrayBuffer());
      const source = this.source;
      if (this.send({ type: "frame", id: `${ERROR_PREFIX}${source}`, source, image, ts: Date.now() })) this.sent += 1;
    } finally {
      this.capturing = false;
    }
  }

  watch() {
    const limits = this.limitsOf();
    const every = Math.max(Number(this.ui.watchEvery.value) || 0, limits.min_watch_every_s ?? 1);
    const text = this.ui.watchText.value.trim() || "What changed?";
    this.ui.watchEvery.value = String(every);
    const frame = { type: "watch", id: `${ERROR_PREFIX}watch`, source: this.source, every_s: every, text };
    if (!this.active || !this.send(frame)) return this.say("Watching needs a live view and a connection.", "problem");
    this.watching = true;
    this.show();
    this.say(`Watching the ${this.source}: the server asks "${text}" every ${every} s while the view changes.`);
  }

  unwatch() {
    this.send({ type: "unwatch", id: `${ERROR_PREFIX}unwatch` }); // not connected: the watch ended with the socket's session anyway
    this.watching = false;
    this.show();
  }

  // A new socket starts with no watch on the server side, and frames go on by themselves.
  connectionChanged(connected) {
    if (!connected && this.watching) {
      this.watching = false;
      this.show();
    }
  }

  // The server's error about one of this module's frames: said here, not in the conversation. True when taken.
  takeError(frame) {
    if (!String(frame.id ?? "").startsWith(ERROR_PREFIX)) return false;
    if (frame.id === `${ERROR_PREFIX}watch`) {
      this.watching = false;
      this.show();
    }
    this.say(`The server refused a live ${frame.id.slice(ERROR_PREFIX.length)} frame (${frame.code}): ${frame.message}`, "problem");
    return true;
  }

  // A reply the server started for the watch: marked as such, with the question it answers.
  markWatchReply(item) {
    item.dataset.initiated = "watch";
    item.querySelector(".role")?.after(element("p", { className: "watch-label", textContent: `From watch: ${this.ui.watchText.value.trim() || "What changed?"}` }));
  }

  // What a live turn's `accepted.live_frames` says it read, shown under the question.
  markLiveTurn(item, liveFrames) {
    if (!item || !liveFrames) return;
    const seconds = Math.max(0, (liveFrames.last_ts - liveFrames.first_ts) / 1000).toFixed(1);
    const still = liveFrames.still ? ` The scene was still (${liveFrames.merged} repeat(s) merged).` : "";
    item.append(element("p", { className: "live-note", textContent: `Asked over ${liveFrames.count} live frame(s) spanning ${seconds} s.${still}` }));
    this.still = Boolean(liveFrames.still);
    this.show();
  }

  show() {
    const { indicator, indicatorText, preview, stop, watch, watchToggle } = this.ui;
    indicator.hidden = preview.hidden = stop.hidden = watch.hidden = !this.active;
    indicator.dataset.source = this.source ?? "";
    indicator.dataset.still = String(this.active && this.still);
    const notes = `${this.watching ? " · watching" : ""}${this.still ? " · still" : ""}`;
    indicatorText.textContent = this.active ? `Live: ${this.source}${notes}` : "";
    preview.setAttribute("aria-label", this.active ? `Preview of the ${this.source} frames sent` : "Live preview");
    watchToggle.textContent = this.watching ? "Stop watching" : "Watch";
    watchToggle.setAttribute("aria-pressed", String(this.watching));
  }

  say(text, kind = "") {
    this.ui.note.textContent = text;
    this.ui.note.dataset.kind = kind;
  }
}

function reason(err) {
  if (err?.name === "NotAllowedError") return "permission was denied, or sharing was cancelled.";
  if (err?.name === "NotFoundError") return "no such device was found.";
  if (err?.name === "NotSupportedError" || err instanceof TypeError) return "this browser cannot do it here.";
  return err?.message || String(err);
}
