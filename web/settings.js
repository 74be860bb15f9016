// Generation settings: kept in localStorage, bounded by what the server announced in `ready`, so a
// value that would make every message fail (a max_tokens filling the context window) never sticks.

const STORAGE_KEY = "gateway.settings";

// A reply may use the context window minus room for the system prompt and the message itself:
// a quarter of the window, at most 1024 tokens. The server's own max_tokens limit also applies.
export function maxTokensCeiling(limits) {
  const context = limits.context_tokens ?? Infinity;
  const room = Number.isFinite(context) ? context - Math.min(1024, Math.ceil(context / 4)) : Infinity;
  return Math.max(1, Math.min(limits.max_tokens ?? Infinity, room));
}

export function loadSettings() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "null");
    return saved && typeof saved === "object" ? saved : null;
  } catch {
    return null;
  }
}

export function saveSettings(settings) {
  localStorage.setItem(STORAGE_KEY, JSON.stringify(settings));
}

export function forgetSettings() {
  localStorage.removeItem(STORAGE_KEY);
}

// The saved settings brought within `limits`; `lowered` says whether max_tokens had to come down.
export function boundSettings(settings, limits) {
  const ceiling = maxTokensCeiling(limits);
  if (!(settings?.max_tokens > ceiling)) return { settings, lowered: false };
  return { settings: { ...settings, max_tokens: ceiling }, lowered: true };
}

export class SettingsForm {
  constructor(form) {
    this.form = form;
    this.fields = {
      system: form.elements.system,
      temperature: form.elements.temperature,
      top_p: form.elements.top_p,
      max_tokens: form.elements.max_tokens,
    };
    this.hint = form.querySelector("#max-tokens-hint");
  }

  fill(settings) {
    for (const [name, input] of Object.entries(this.fields)) input.value = settings?.[name] ?? "";
  }

  // The form's values, or a `problem` naming the first out-of-range field (which gets the focus).
  read() {
    const invalid = Object.values(this.fields).find((input) => !input.checkValidity());
    if (invalid) {
      invalid.reportValidity();
      return { problem: `${invalid.labels[0].textContent}: ${invalid.validationMessage}` };
    }
    const number = (input) => (Number.isFinite(input.valueAsNumber) ? input.valueAsNumber : undefined);
    return {
      values: {
        system: this.fields.system.value, // "" clears the system prompt
        temperature: number(this.fields.temperature),
        top_p: number(this.fields.top_p),
        max_tokens: number(this.fields.max_tokens),
      },
    };
  }

  // The server's defaults become placeholders (an empty field means "server default"); max_tokens is
  // capped at what fits the context window, and the hint says why.
  showLimits(defaults, limits) {
    this.fields.temperature.placeholder = defaults.temperature ?? "";
    this.fields.top_p.placeholder = defaults.top_p ?? "";
    this.fields.max_tokens.placeholder = defaults.max_tokens ?? "";
    const ceiling = maxTokensCeiling(limits);
    if (!Number.isFinite(ceiling)) return;
    this.fields.max_tokens.max = ceiling;
    const context = limits.context_tokens ? ` of the ${limits.context_tokens}-token context window` : "";
    this.hint.textContent = `1 to ${ceiling}: the rest${context} is kept for the system prompt and your message.`;
  }
}
