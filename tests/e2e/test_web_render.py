"""Replies as markdown: headings, lists, tables, code blocks with copy buttons; and nothing a reply holds
(raw HTML, event handlers, javascript: links, images, styles) can run script, load anything or restyle
the page. The replies come from a scripted engine behind the real server."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import expect

from gateway.config import Settings
from tests.e2e import test_web as web
from tests.e2e.test_web import Chat, ReplyEngine, Site, save_screenshot, serving

browser = web.browser
open_chat = web.open_chat

CODE = 'def greet(name):\n    return f"hello {name}"'
MARKDOWN = f"""## Plan

Here is **bold**, *italic* and `inline code`, plus a [link](https://example.com/docs).

1. first
2. second

| model | tokens |
| ----- | ------ |
| demo  | 512    |

```python
{CODE}
```
"""

HOSTILE = {
    "img": "<img src=x onerror=\"window.pwned = 'img'\">",
    "script": "<script>window.pwned = 'script'</script>",
    "link": "[click me](javascript:window.pwned='link')",
    "html-link": "<a href=\"javascript:window.pwned='a'\" onclick=\"window.pwned='onclick'\">press</a>",
    "svg": "<svg onload=\"window.pwned='svg'\"><circle r=5></circle></svg>",
    "iframe": "<iframe srcdoc=\"<script>parent.pwned='iframe'</script>\"></iframe>",
    "image": "![tracker](/web/favicon.svg?tracked=1) and ![x](javascript:window.pwned='image')",
    "style": '<style>body { display: none }</style><div class="drop-overlay" id="prompt">cover</div>',
    "data-link": "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
}


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    replies = {"markdown": MARKDOWN, **{f"hostile {name}": text for name, text in HOSTILE.items()}}
    with serving(Settings(engine="scripted"), ReplyEngine(replies)) as served:
        yield served


def test_markdown_renders_with_copy_buttons_for_code_and_reply(site: Site, open_chat: Callable[..., Chat]) -> None:
    """Headings, emphasis, lists, tables and fenced code render; the code block's button copies the code,
    the reply's button copies the markdown source as the model wrote it."""
    chat = open_chat(site)
    chat.send("markdown")
    chat.wait_done()

    text = chat.last_reply().locator(".text")
    expect(text.locator("h2")).to_have_text("Plan")
    expect(text.locator("strong")).to_have_text("bold")
    expect(text.locator("ol > li")).to_have_count(2)
    expect(text.locator("table td").first).to_have_text("demo")
    link = text.locator("a")
    expect(link).to_have_attribute("href", "https://example.com/docs")
    expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    expect(text.locator(".code-block pre code")).to_have_text(CODE + "\n")

    text.locator(".code-block button").click()
    expect(text.locator(".code-block button")).to_have_text("Copied")
    assert chat.clipboard() == CODE
    chat.last_reply().get_by_role("button", name="Copy reply").click()
    assert chat.clipboard() == MARKDOWN
    expect(chat.page.locator("#announcer")).to_have_text("Copied to the clipboard.")
    save_screenshot(chat.page, "web-markdown.png")


@pytest.mark.parametrize("color_scheme", ["light", "dark"])
def test_markdown_screenshot(site: Site, open_chat: Callable[..., Chat], color_scheme: str) -> None:
    """The rendered reply in both themes, for a reviewer to look at."""
    chat = open_chat(site, color_scheme=color_scheme)
    chat.send("markdown")
    chat.wait_done()
    save_screenshot(chat.page, f"web-markdown-{color_scheme}.png")


@pytest.mark.parametrize("name", list(HOSTILE))
def test_nothing_in_a_reply_can_run_script_or_load_anything(site: Site, open_chat: Callable[..., Chat], name: str) -> None:
    """Whatever the reply holds, no script runs (even with the page's CSP switched off, so the sanitiser
    alone is tested), nothing is fetched, no element with a handler, a script URL or a page class appears,
    and raw HTML is shown as text."""
    chat = open_chat(site, bypass_csp=True)
    requests: list[str] = []
    chat.page.on("request", lambda request: requests.append(request.url))
    chat.send(f"hostile {name}")
    chat.wait_done()
    text = chat.last_reply().locator(".text")
    for anchor in text.locator("a:not([href])").all():
        anchor.click()  # what was a script link is now inert
    chat.page.wait_for_timeout(300)

    assert chat.page.evaluate("window.pwned") is None
    assert not [url for url in requests if "tracked" in url or url.startswith(("javascript:", "data:"))]
    assert chat.page.evaluate(DANGEROUS_NODES) == []
    expect(chat.page.locator("body")).to_be_visible()
    if name in ("img", "script", "svg", "iframe", "style"):
        assert "<" in (text.text_content() or ""), "raw HTML is shown as text"


# Elements in replies that could run script, load a resource, or borrow the page's styling and ids.
DANGEROUS_NODES = """() => [...document.querySelectorAll(".message.assistant .text *")]
  .filter((el) => ["SCRIPT", "IMG", "IFRAME", "SVG", "STYLE", "OBJECT", "EMBED", "FORM"].includes(el.tagName.toUpperCase())
    || [...el.attributes].some((a) => a.name.startsWith("on") || a.name === "style" || a.name === "id"
         || (a.name === "class" && el.closest(".code-block") === null)
         || /^\\s*(javascript|data|vbscript):/i.test(a.value)))
  .map((el) => el.outerHTML)"""


def test_the_page_forbids_inline_and_foreign_script(site: Site, open_chat: Callable[..., Chat]) -> None:
    """A second line of defence: the page's Content-Security-Policy runs only its own files."""
    chat = open_chat(site)
    policy = chat.page.locator("meta[http-equiv=Content-Security-Policy]").get_attribute("content") or ""
    assert "script-src 'self'" in policy and "default-src 'self'" in policy and "unsafe" not in policy
    chat.page.evaluate("document.body.insertAdjacentHTML('beforeend', '<img src=x onerror=\"window.pwned=1\">')")
    chat.page.wait_for_timeout(200)
    assert chat.page.evaluate("window.pwned") is None
