"""Headless Chromium for the HTML view's tests, and the README's screenshot of the view.

`chromium --headless --dump-dom` loads a page from a file (no server, no network), runs its
scripts and prints the DOM as it stands after them; the view's script records the result on
<body>: data-rendered="yes" when it finished, data-errors with any script error, and the
numbers of kernel boxes and graph nodes it drew.

    python tests/browser.py docs/view.png     # rebuilds the README's screenshot
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def _run(args: list[str], timeout: float = 90) -> str:
    exe = find_chromium()
    if exe is None:
        raise RuntimeError("no Chromium found (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-extensions", "--disable-background-networking",
               f"--user-data-dir={profile}", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def dump_dom(html_path: str) -> str:
    """The page's DOM after its scripts ran."""
    return dump_dom_url("file://" + os.path.abspath(html_path))


def dump_dom_url(url: str, budget_ms: int = 5000) -> str:
    """The DOM of the page at `url` (a file, or a server on 127.0.0.1) after its scripts ran
    (for `budget_ms` of virtual time)."""
    return _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", url])


def body_attributes(dom: str) -> dict[str, str]:
    m = re.search(r"<body([^>]*)>", dom)
    if m is None:
        raise AssertionError("the dumped DOM has no <body>")
    return dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1)))


def screenshot(html_path: str, png_path: str, width: int = 1400, height: int = 1000) -> str:
    _run(["--hide-scrollbars", f"--window-size={width},{height}",
          f"--screenshot={os.path.abspath(png_path)}", "file://" + os.path.abspath(html_path)])
    return png_path


def demo_page(html_path: str) -> str:
    """The README's example: a small CNN classifier, profiled, as a view page."""
    import numpy as np

    import graphc

    def cnn(x, w1, b1, w2, b2, w3, b3):
        h = graphc.relu(graphc.conv2d(x, w1, padding=1) + b1.reshape((1, -1, 1, 1)))
        h = graphc.max_pool2d(h, 2)
        h = graphc.relu(graphc.conv2d(h, w2, padding=1) + b2.reshape((1, -1, 1, 1)))
        h = graphc.max_pool2d(h, 2)
        h = h.reshape((h.shape[0], -1))
        return graphc.softmax(h @ w3 + b3)

    shapes = [(8, 1, 3, 3), (8,), (16, 8, 3, 3), (16,), (16 * 7 * 7, 10), (10,)]
    specs = [graphc.tensor(("B", 1, 28, 28))] + [graphc.tensor(s) for s in shapes]
    f = graphc.compile(cnn, *specs)
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((64, 1, 28, 28)).astype(np.float32)]
    args += [(0.1 * rng.standard_normal(s)).astype(np.float32) for s in shapes]
    return f.to_html(html_path, profile=f.profile(*args))


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "docs/view.png"
    with tempfile.TemporaryDirectory() as tmp:
        page = demo_page(os.path.join(tmp, "view.html"))
        print(body_attributes(dump_dom(page)))
        screenshot(page, out, 1400, 1250)
    print(f"wrote {out}")
