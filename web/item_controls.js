// The controls on a message or a reply: its versions (`‹ 2/3 ›`, flipped with `switch`) and what can be
// done to it (edit a message, regenerate a reply, branch into a new chat, delete). Plain buttons whose
// names say what they act on, so a keyboard or a screen reader reaches and understands each one.

import { element } from "./messages.js";

// `entry`: a history entry ({role, item_id, siblings, index, sibling_ids}); act(action, itemId) does what a
// button says, on the item itself or, for a version, on the sibling to switch to.
export function itemControls(entry, act) {
  const noun = entry.role === "user" ? "message" : "reply";
  const own = (action) => () => act(action, entry.item_id);
  const actions = entry.role === "user" ? [button("Edit", "Edit message", own("edit"))] : [
    button("Regenerate", "Regenerate reply", own("regenerate")),
    button("Branch", "Branch into a new chat from this reply", own("fork")), // the new chat goes on from a reply
  ];
  const delete_ = button("Delete", `Delete ${noun}`, own("delete"));
  const group = element("div", { className: "item-actions" }, [...versions(entry, noun, act), ...actions, delete_]);
  group.setAttribute("role", "group");
  group.setAttribute("aria-label", `Actions on this ${noun}`);
  return group;
}

// `‹ n/m ›` where the item has siblings; each arrow switches to the version beside it.
function versions({ siblings = 1, index = 0, sibling_ids: ids = [] }, noun, act) {
  if (siblings < 2) return [];
  const beside = (offset) => ids[index + offset];
  const arrow = (text, label, offset) => {
    const target = beside(offset);
    const arrowButton = button(text, `${label} version of this ${noun}`, () => act("switch", target));
    arrowButton.disabled = !target;
    return arrowButton;
  };
  const position = element("span", { className: "version" }, [
    element("span", { className: "visually-hidden", textContent: "Version " }),
    `${index + 1}/${siblings}`,
  ]);
  return [element("span", { className: "versions" }, [arrow("‹", "Previous", -1), position, arrow("›", "Next", 1)])];
}

// The inline editor of a user message: Enter (or Send) sends the new version, Shift+Enter is a newline,
// Escape (or Cancel) puts the message back as it was.
export function editForm(text, onSend, onCancel) {
  const area = element("textarea", { className: "edit-text", value: text, rows: Math.min(8, text.split("\n").length + 1) });
  area.setAttribute("aria-label", "New version of the message");
  const send = element("button", { type: "submit", className: "primary", textContent: "Send" });
  send.setAttribute("aria-label", "Send the new version");
  const cancel = button("Cancel", "Cancel editing", onCancel);
  const form = element("form", { className: "edit-form" }, [area, element("div", { className: "edit-buttons" }, [send, cancel])]);
  form.setAttribute("aria-label", "Edit message");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    onSend(area.value);
  });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") onCancel();
    if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
    event.preventDefault();
    onSend(area.value);
  });
  return { form, area };
}

function button(text, label, onClick) {
  const made = element("button", { type: "button", textContent: text });
  made.setAttribute("aria-label", label);
  made.addEventListener("click", onClick);
  return made;
}
