// Replies rendered as markdown. marked parses; raw HTML in a reply is shown as text, never interpreted;
// images become links (a reply must not make the browser fetch anything); DOMPurify then removes
// whatever could still run script or restyle the page; each code block gets a copy button.

import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.js";
import { copyButton } from "./clipboard.js";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

const marked = new Marked({
  gfm: true,
  async: false,
  renderer: {
    html: ({ text }) => escapeHtml(text),
    image: ({ href, text }) => `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`,
  },
});

const PURIFY = {
  USE_PROFILES: { html: true }, // no SVG or MathML
  FORBID_TAGS: ["img", "picture", "source", "video", "audio", "iframe", "style", "form", "input", "button", "textarea", "select"],
  FORBID_ATTR: ["style", "class", "id", "name"], // a reply cannot borrow the page's classes or ids
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

// Replace the container's content with `text` rendered; cheap enough to redo on every streamed delta.
export function renderMarkdown(container, text) {
  const fragment = DOMPurify.sanitize(marked.parse(text), PURIFY);
  for (const pre of fragment.querySelectorAll("pre")) addCopyButton(pre);
  container.replaceChildren(fragment);
}

function addCopyButton(pre) {
  const block = document.createElement("div");
  block.className = "code-block";
  pre.replaceWith(block);
  pre.tabIndex = 0; // a wide block scrolls sideways: keyboard users must be able to reach it
  block.append(copyButton("Copy", "Copy code", () => pre.textContent.replace(/\n$/, "")), pre);
}
