"""Load pages of the built site in headless Chromium and check that they render.

    mkdocs build --strict && python scripts/check_site.py        # site/ by default
    python scripts/check_site.py --site site --chromium /usr/bin/chromium

The site is served on 127.0.0.1 (a free port) for the duration of the check. Each page in
:data:`PAGES` is loaded by ``chromium --headless --dump-dom`` with console logging on, after its
scripts ran; the check fails when

- an expected piece of content is missing from the rendered DOM (the text, the table, and the marks
  that the theme's JavaScript ran: ``<html class="... js">``, copy buttons on code blocks);
- the page logged anything to the console (uncaught exceptions included: the site logs nothing when
  all is well);
- the page requested a file that the server could not deliver (a missing stylesheet, script or plot).

Chromium comes from Debian's ``chromium`` package; no network is needed.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=10000",  # let the theme's scripts run before the DOM is dumped
]
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\] (.*)")
THEME_SCRIPT_RAN = re.compile(r'<html[^>]*class="[^"]*\bjs\b')


@dataclass
class Page:
    path: str
    what: str
    expect: list[str | re.Pattern] = field(default_factory=list)


PAGES = [
    Page(
        "/",
        "home page",
        ["<title>smp3d</title>", "Quick start", "API reference", THEME_SCRIPT_RAN, "md-code__button"],
    ),
    Page(
        "/api/smp3d.Unet/",
        "API page of smp3d.Unet",
        ["smp3d.Unet", "encoder_name", "spatial_dims", "Ronneberger", re.compile(r"<table"), THEME_SCRIPT_RAN],
    ),
    Page(
        "/encoders/",
        "encoder table",
        ["<table", "resnet34", "mit_b0", "efficientnet-b0", "md-typeset__table", THEME_SCRIPT_RAN],
    ),
    Page(
        "/benchmarks/",
        "benchmarks page with its plots",
        [re.compile(r'<img[^>]*src="cpu_models_2026-11-23\.png"'), THEME_SCRIPT_RAN],
    ),
]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the site and records (path, status) of every request."""

    requests: list[tuple[str, int]]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.requests.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, list[tuple[str, int]]]:
    requests: list[tuple[str, int]] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, requests


def load(chromium: str, url: str, timeout: float) -> tuple[str, list[str]]:
    """The rendered DOM of ``url`` and the console messages it logged."""
    with tempfile.TemporaryDirectory(prefix="check-site-") as profile:
        done = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if done.returncode != 0:
        raise RuntimeError(f"{chromium} exited with {done.returncode} on {url}:\n{done.stderr[-2000:]}")
    console = [m.group(1) for line in done.stderr.splitlines() if (m := CONSOLE.search(line))]
    return done.stdout, console


def check_page(chromium: str, base: str, page: Page, requests: list, timeout: float) -> list[str]:
    first = len(requests)
    dom, console = load(chromium, base + page.path, timeout)
    problems = []
    for expected in page.expect:
        found = expected.search(dom) if isinstance(expected, re.Pattern) else expected in dom
        if not found:
            shown = expected.pattern if isinstance(expected, re.Pattern) else expected
            problems.append(f"missing from the rendered page: {shown!r}")
    problems += [f"console: {message}" for message in console]
    problems += [f"HTTP {status} for {path}" for path, status in requests[first:] if status >= 400]
    if not any(path.split("?")[0] == page.path for path, _ in requests[first:]):
        problems.append("the page itself was never requested")
    return [f"{page.what} ({page.path}): {p}" for p in problems]


def find_chromium(given: str | None) -> str:
    for name in [given] if given else ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(name) if name else None
        if path:
            return path
    raise SystemExit(
        f"check_site: no Chromium found ({given or 'chromium, chromium-browser, google-chrome'}); "
        "on Debian: apt-get install -y chromium"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", type=Path, default=ROOT / "site", help="the built site (mkdocs build)")
    parser.add_argument("--chromium", default=None, help="the browser executable (default: chromium on PATH)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per page")
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        print(
            f"check_site: {args.site}/index.html not found; build the site first (mkdocs build --strict)",
            file=sys.stderr,
        )
        return 2
    chromium = find_chromium(args.chromium)
    server, requests = serve(args.site)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    failures = []
    try:
        for page in PAGES:
            problems = check_page(chromium, base, page, requests, args.timeout)
            failures += problems
            print(f"{'FAIL' if problems else 'ok  '} {page.what}: {base}{page.path}")
    finally:
        server.shutdown()
    for problem in failures:
        print(f"check_site: {problem}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
