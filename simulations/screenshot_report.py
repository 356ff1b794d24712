"""Screenshot a run's report.html in a real headless browser (Chromium), to look at the page as people see it.

    python -m simulations.screenshot_report RUN_DIR [OUT.png] [--width 1280] [--height 4000]

``overflow(PAGE, width=390)`` measures whether the page would scroll sideways
on a phone (tests/test_report_page.py). The screenshots in docs/img
(report-390.png, report-1280.png) were taken with this module.

Needs Debian's ``chromium`` package (``apt-get install -y chromium``); the
page loads nothing from the network, so the browser runs with networking
irrelevant. Prints the PNG's path; exit 2 when Chromium or the page is missing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def screenshot(page: Path, out: Path, *, width: int = 1280, height: int = 4000, timeout: float = 120.0) -> Path:
    """Render ``page`` (an HTML file) with headless Chromium into the PNG ``out``; raises RuntimeError on failure."""
    browser = find_browser()
    if browser is None:
        raise RuntimeError("no Chromium found: apt-get install -y chromium")
    page, out = Path(page).resolve(), Path(out).resolve()
    if not page.is_file():
        raise RuntimeError(f"{page} is missing")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedemo-chromium-") as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={out}",
                   page.as_uri()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{browser} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return out


def overflow(page: Path, *, width: int = 390, timeout: float = 120.0) -> tuple[int, int]:
    """(visible width, content width) in CSS px of ``page`` laid out ``width`` px wide, as Chromium measures them.

    A content width above the visible one means the reader scrolls the whole page sideways (a table or
    a long word pushed it out). Chromium will not open a window narrower than 500 px, so the page is laid
    out in an iframe of ``width`` px inside a wrapper page whose script writes the two widths into the DOM
    that ``--dump-dom`` prints (the report itself has no script).
    """
    browser = find_browser()
    if browser is None:
        raise RuntimeError("no Chromium found: apt-get install -y chromium")
    page = Path(page).resolve()
    with tempfile.TemporaryDirectory(prefix="fedemo-chromium-") as tmp:
        wrapper = Path(tmp) / "measure.html"
        wrapper.write_text(
            f'<!DOCTYPE html><html><body><iframe id="f" src="{page.as_uri()}" style="width:{width}px;height:800px;'
            'border:0"></iframe><script>document.getElementById("f").onload=function(){'
            'var d=this.contentDocument.documentElement;'
            'document.body.setAttribute("data-widths",d.clientWidth+" "+d.scrollWidth);};</script></body></html>')
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                   "--virtual-time-budget=10000", f"--user-data-dir={Path(tmp) / 'profile'}",
                   "--window-size=1280,1000", "--dump-dom", wrapper.as_uri()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    import re

    found = re.search(r'data-widths="(\d+) (\d+)"', done.stdout)
    if not found:
        raise RuntimeError(f"{browser} did not measure {page} ({done.returncode}): {done.stderr.strip()[-300:]}")
    return int(found.group(1)), int(found.group(2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder with report.html (or the HTML file itself)")
    parser.add_argument("out", type=Path, nargs="?", help="the PNG to write (default: RUN_DIR/report.png)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=4000)
    args = parser.parse_args(argv)
    page = args.run_dir if args.run_dir.suffix == ".html" else args.run_dir / "report.html"
    out = args.out or page.with_suffix(".png")
    try:
        print(screenshot(page, out, width=args.width, height=args.height))
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        print(f"screenshot_report: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
