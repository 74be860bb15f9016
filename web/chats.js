// The list of stored conversations, to switch between: the most recently used first, the current one
// marked. Only titles and times reach the page; tokens stay in storage.

import { listConversations } from "./conversations.js";
import { element } from "./messages.js";

export class ChatList {
  // `panel` holds `#chat-list` and `#chats-empty`; onPick(session) switches to a listed conversation.
  constructor(panel, onPick) {
    this.panel = panel;
    this.list = panel.querySelector("#chat-list");
    this.empty = panel.querySelector("#chats-empty");
    this.onPick = onPick;
  }

  render(currentSession) {
    const entries = listConversations();
    this.list.replaceChildren(...entries.map((entry) => this.item(entry, entry.session === currentSession)));
    this.empty.hidden = entries.length > 0;
  }

  item(entry, current) {
    const when = new Date(entry.time);
    const button = element("button", { type: "button", className: "chat" }, [
      element("span", { className: "chat-title", textContent: entry.title }),
      element("time", { className: "chat-time", dateTime: when.toISOString(), textContent: formatTime(when) }),
    ]);
    button.dataset.session = entry.session;
    if (current) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => this.onPick(entry.session));
    return element("li", {}, [button]);
  }
}

function formatTime(when) {
  const today = when.toDateString() === new Date().toDateString();
  return today
    ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : when.toLocaleDateString([], { month: "short", day: "numeric" });
}
