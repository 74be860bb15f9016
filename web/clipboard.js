// Copy buttons: the Clipboard API where the page is a secure context (https, or localhost), else the
// old execCommand path, so copying also works on a plain-http LAN address.

const COPIED_MS = 1500;

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return copyWithSelection(text);
  }
}

function copyWithSelection(text) {
  const area = Object.assign(document.createElement("textarea"), { value: text, readOnly: true });
  area.className = "visually-hidden";
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  return copied;
}

// A button that copies `textOf()` when pressed and says so, on the button and to screen readers.
export function copyButton(label, accessibleName, textOf) {
  const button = Object.assign(document.createElement("button"), { type: "button", className: "copy", textContent: label });
  button.setAttribute("aria-label", accessibleName);
  button.addEventListener("click", async () => {
    const copied = await copyText(textOf());
    button.textContent = copied ? "Copied" : "Copy failed";
    announce(copied ? "Copied to the clipboard." : "Could not copy: the browser refused.");
    setTimeout(() => { button.textContent = label; }, COPIED_MS);
  });
  return button;
}

function announce(text) {
  const announcer = document.getElementById("announcer");
  if (announcer) announcer.textContent = text;
}
