"""Make docs/serve.png: the writing page in headless Chromium, with suggestions listed.

    python tests/serve/make_screenshot.py --model DIR [--framework torch] [--out docs/serve.png]

Serves ``--model`` on a free loopback port, types ``--text`` into the editor, waits for the
suggestions and saves a screenshot. The browser is the system Chromium (``--browser``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from conversion.serve import ServerThread, load_engine  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--framework", default="torch")
    p.add_argument("--name", default=None, help="model id shown on the page")
    p.add_argument("--text", default="GPT-2 is a language model that")
    p.add_argument("--browser", default="/usr/bin/chromium")
    p.add_argument("--out", default=str(ROOT / "docs" / "serve.png"))
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    engine = load_engine(args.model, args.framework, name=args.name)
    with ServerThread(engine) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.browser, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 720})
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('framework').textContent !== '…'")
        for name, value in (("temperature", 0.8), ("n", 4), ("max-tokens", 12), ("delay", 150)):
            page.eval_on_selector(
                f"#{name}",
                "(el, v) => { el.value = v; el.dispatchEvent("
                "new Event('input', {bubbles: true})); }",
                str(value),
            )
        page.click("#editor")
        page.keyboard.type(args.text, delay=20)
        page.wait_for_function(
            "() => { const li = [...document.querySelectorAll('#suggestions li')];"
            " return li.length === 4 && li.every(x => !x.classList.contains('pending')); }",
            timeout=60_000,
        )
        page.keyboard.press("Alt+ArrowDown")
        page.screenshot(path=args.out)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
