// The message box and the images waiting to be sent: picked, pasted or dropped, each checked by name
// before it is shown; what a refused message held can be put back.

import { readImage } from "./attachments.js";
import { element, thumbnail } from "./messages.js";

export class Composer {
  constructor(ui, limitsOf) {
    this.ui = ui;
    this.limitsOf = limitsOf; // () => the server's limits
    this.attachments = []; // {name, data, url, width, height}
  }

  get text() {
    return this.ui.prompt.value;
  }

  note(text) {
    this.ui.note.textContent = text;
  }

  // Empty the box after sending; the attachments' object URLs now belong to the sent message.
  take() {
    const taken = { text: this.ui.prompt.value, attachments: this.attachments };
    this.ui.prompt.value = "";
    this.attachments = [];
    this.render();
    return taken;
  }

  // Put a refused message back (its text only if the box is still empty).
  restore(text, attachments) {
    if (!this.ui.prompt.value) this.ui.prompt.value = text;
    this.attachments = [...attachments, ...this.attachments];
    this.render();
    this.ui.prompt.focus();
  }

  async add(files) {
    const limits = this.limitsOf();
    const max = limits.max_images_per_turn ?? Infinity;
    const problems = [];
    for (const file of files) {
      if (this.attachments.length >= max) {
        problems.push(max === 0 ? "The served model is text-only." : `At most ${max} images per message.`);
        break;
      }
      try {
        this.attachments.push(await readImage(file, limits));
      } catch (err) {
        problems.push(err.message);
      }
    }
    this.note(problems.join(" "));
    this.render();
  }

  remove(index) {
    const [removed] = this.attachments.splice(index, 1);
    URL.revokeObjectURL(removed.url);
    this.render();
    this.ui.prompt.focus();
  }

  render() {
    this.ui.attachments.replaceChildren(
      ...this.attachments.map((a, index) => {
        const remove = element("button", { type: "button", className: "remove", textContent: "×" });
        remove.setAttribute("aria-label", `Remove ${a.name}`);
        remove.onclick = () => this.remove(index);
        return element("li", {}, [thumbnail(a), remove]);
      }),
    );
  }

  // Images arrive by the file picker, by paste anywhere, or dropped anywhere on the page.
  wire() {
    const { fileInput, dropOverlay } = this.ui;
    fileInput.addEventListener("change", async () => {
      await this.add([...fileInput.files]);
      fileInput.value = ""; // so choosing the same file again fires `change` again
    });
    document.addEventListener("paste", (event) => {
      const files = [...(event.clipboardData?.files ?? [])].filter((f) => f.type.startsWith("image/"));
      if (files.length) {
        event.preventDefault();
        this.add(files);
      }
    });
    document.addEventListener("dragover", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault(); // allows the drop
      dropOverlay.hidden = false;
    });
    document.addEventListener("dragleave", (event) => {
      if (event.relatedTarget === null) dropOverlay.hidden = true; // left the window
    });
    document.addEventListener("drop", (event) => {
      dropOverlay.hidden = true;
      if (!hasFiles(event)) return;
      event.preventDefault();
      this.add([...event.dataTransfer.files]);
    });
  }
}

function hasFiles(event) {
  return event.dataTransfer && [...event.dataTransfer.types].includes("Files");
}
