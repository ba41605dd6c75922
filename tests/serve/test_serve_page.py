"""The writing page in a real headless browser (the system Chromium, driven by Playwright):
type into the editor, get suggestions, accept one with Tab and one with a click, ask with
Ctrl+Space, see errors. In CI (``CI`` set) a missing browser fails the test instead of
skipping it: ``.ci/run`` installs Debian's ``chromium``."""

from __future__ import annotations

import os
import shutil

import pytest
from serve_helpers import Client

from conversion.serve import ServerThread, load_engine

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser_path() -> str | None:
    path = os.environ.get("GPT2_SERVE_BROWSER")
    if path:
        return path
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _require(what: str, ok: bool) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing; .ci/run installs it (browser tests must run in CI)")
        pytest.skip(f"{what} is not installed")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    _require("playwright (pip)", sync_playwright is not None)
    path = _browser_path()
    _require("a Chromium browser (apt-get install chromium)", path is not None)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def served(ckpt):
    pytest.importorskip("torch")
    engine = load_engine(str(ckpt), "torch")
    with ServerThread(engine) as url:
        yield engine, url


@pytest.fixture
def page(browser, served):
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    response = pg.goto(served[1] + "/")
    assert response is not None and response.status == 200
    pg.wait_for_selector("#framework")
    # the header is filled from /health once the page has loaded
    pg.wait_for_function(
        "(document.getElementById('framework') || {}).textContent === 'torch'", timeout=60_000
    )
    yield pg
    context.close()
    assert not errors, errors  # no JavaScript exceptions


def set_range(pg, name: str, value) -> None:
    pg.eval_on_selector(
        f"#{name}",
        "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }",
        str(value),
    )


def wait_done(pg, count: int) -> list[str]:
    """Texts of ``count`` finished suggestions."""
    pg.wait_for_function(
        "n => { const li = [...document.querySelectorAll('#suggestions li')];"
        " return li.length === n && li.every(x => !x.classList.contains('pending')"
        " && x.textContent.length > 0); }",
        arg=count,
        timeout=60_000,
    )
    return pg.eval_on_selector_all("#suggestions li", "els => els.map(e => e.textContent)")


def greedy(url: str, prompt: str, k: int) -> str:
    body = {"prompt": prompt, "max_tokens": k, "temperature": 0}
    return Client(url).post("/v1/completions", body)[2]["choices"][0]["text"]


def test_page_shows_what_answers(page, served):
    engine, _ = served
    assert page.text_content("#model") == engine.name
    assert page.text_content("#dtype") == "fp32"
    assert "torch" in page.title()


def test_type_then_tab_inserts_the_greedy_continuation(page, served):
    _, url = served
    set_range(page, "temperature", 0)  # greedy: one suggestion, the API's greedy answer
    set_range(page, "max-tokens", 6)
    set_range(page, "delay", 150)
    page.click("#editor")
    typed = "The meaning of life is"
    page.keyboard.type(typed, delay=15)
    (suggestion,) = wait_done(page, 1)
    assert suggestion == greedy(url, typed, 6)
    assert page.text_content("#tps").endswith("tokens)")  # tokens/s shown
    page.keyboard.press("Tab")
    assert page.input_value("#editor") == typed + suggestion
    assert page.evaluate("document.activeElement.id") == "editor"  # Tab did not move focus


def test_click_inserts_at_the_cursor(page):
    set_range(page, "temperature", 0.9)
    set_range(page, "n", 3)
    set_range(page, "max-tokens", 5)
    set_range(page, "delay", 150)
    page.click("#editor")
    page.keyboard.type("Dear diary,", delay=10)
    texts = wait_done(page, 3)
    page.keyboard.press("Alt+ArrowDown")
    assert page.get_attribute("#suggestions li:nth-child(2)", "class") == "selected"
    page.click("#suggestions li:nth-child(3)")
    assert page.input_value("#editor") == "Dear diary," + texts[2]
    cursor = page.evaluate("document.getElementById('editor').selectionStart")
    assert cursor == len("Dear diary," + texts[2])


def test_ctrl_space_asks_when_auto_is_off_and_escape_dismisses(page):
    set_range(page, "temperature", 0)
    set_range(page, "max-tokens", 4)
    page.uncheck("#auto")
    page.click("#editor")
    page.keyboard.type("No automatic", delay=10)
    page.wait_for_timeout(800)
    assert page.eval_on_selector_all("#suggestions li", "els => els.length") == 0
    page.keyboard.press("Control+Space")
    wait_done(page, 1)
    page.keyboard.press("Escape")
    assert page.eval_on_selector_all("#suggestions li", "els => els.length") == 0
    page.check("#auto")


def test_server_errors_are_shown(page):
    set_range(page, "temperature", 0)
    set_range(page, "max-tokens", 64)  # the tiny model's whole context: no room for a prompt
    set_range(page, "delay", 150)
    page.click("#editor")
    page.keyboard.type("Too long", delay=10)
    page.wait_for_selector("#status.error")
    assert "exceeds this model's context of 64 tokens" in page.text_content("#status")
