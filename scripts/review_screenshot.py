"""Screenshot the review page of a run with its best site selected (headless Chromium).

    python scripts/review_screenshot.py RUN docs/kilns-review.png [--chip-only]

Serves RUN with the real review server on a free loopback port, opens the page in the
system's Chromium through Playwright (``pip install -e '.[test]'``; ``apt-get install
chromium``), waits until the selected site's image chip has loaded, and saves the page
(or, with ``--chip-only``, the chip alone) as PNG.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from sitewatch.imagery.errors import SitewatchError
from sitewatch.imagery.review.server import make_server

CHROMIUM = "/usr/bin/chromium"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="run directory (holds candidates.gpkg)")
    ap.add_argument("out", type=Path, help="PNG to write")
    ap.add_argument("--chip-only", action="store_true", help="save the chip element only")
    ap.add_argument("--site", default=None, help="select this site first [default: the page's first]")
    args = ap.parse_args(argv)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("review_screenshot: playwright is missing: pip install -e '.[test]'", file=sys.stderr)
        return 2
    try:
        server = make_server(args.run, port=0)
    except SitewatchError as exc:
        print(f"review_screenshot: error: {exc}", file=sys.stderr)
        return 2
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            # the page's CSP forbids the evaluated wait below; bypass it (nothing else runs)
            page = browser.new_page(viewport={"width": 1440, "height": 900}, bypass_csp=True)
            page.goto(server.login_url)  # the link with this start's token logs the page in
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            if args.site:
                page.click(f"#list tbody tr[data-id='{args.site}']")
                page.wait_for_function("s => document.getElementById('site-id').textContent === s", arg=args.site)
            page.wait_for_function("() => { const i = document.getElementById('chip');"
                                   " return i && i.complete && i.naturalWidth > 0; }", timeout=30_000)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            (page.locator("#chip") if args.chip_only else page).screenshot(path=str(args.out))
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
