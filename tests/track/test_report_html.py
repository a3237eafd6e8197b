"""report.html is one self-contained file: images inline, no script, no request to any server;
it renders in headless Chromium with every image loaded. ``spectrum`` and ``compare`` write it too."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import FAST

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--data", "builtin:digits", "--max-samples", "96", *FAST]


def _static_checks(html: str) -> int:
    """No script, every src/href an inline PNG; returns the number of images."""
    assert "<script" not in html.lower() and "@import" not in html and "url(" not in html
    links = re.findall(r"""\b(?:src|href|srcset|poster|action|data)\s*=\s*["']([^"']*)["']""", html, flags=re.I)
    assert links and all(link.startswith("data:image/png;base64,") for link in links), links[:3]
    assert not re.search(r"https?://", html)
    for link in links:
        assert base64.b64decode(link.partition(",")[2])[:8] == b"\x89PNG\r\n\x1a\n"
    return len(links)


def _chromium(page: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--hide-scrollbars", "--proxy-server=127.0.0.1:9",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", *extra]
    return subprocess.run([str(CHROMIUM), *flags, page.as_uri()], capture_output=True, text=True, timeout=180)


def _page_requests(page: Path, tmp_path: Path) -> tuple[list[str], str]:
    """The URLs the page itself requested (Chromium's own background requests have no origin), and
    the DOM after load, with a copy of the page whose added script titles it "loaded/total" images."""
    probe = tmp_path / f"probe-{page.name}"
    script = ('<script>addEventListener("load",()=>{const im=[...document.images];'
              'document.title=im.filter(i=>i.complete&&i.naturalWidth>0).length+"/"+im.length;});</script>')
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    netlog = tmp_path / f"netlog-{page.name}.json"
    done = _chromium(probe, tmp_path, f"--log-net-log={netlog}", "--dump-dom")
    log = json.loads(netlog.read_text())
    start_job = next(v for k, v in log["constants"]["logEventTypes"].items() if k == "URL_REQUEST_START_JOB")
    started = [e.get("params", {}) for e in log["events"] if e["type"] == start_job]
    urls = [p["url"] for p in started if "url" in p and p.get("initiator") != "not an origin"]
    return urls, done.stdout


def _track_report(invoke, run_dir, tmp_path) -> Path:
    code, _, err = invoke(["track", run_dir, *ARGS, "--groups", "3", "--out", tmp_path / "t"])
    assert code == 0, err
    return tmp_path / "t" / "report.html"


def test_the_track_report_is_self_contained(invoke, run_dir, tmp_path):
    report = _track_report(invoke, run_dir, tmp_path)
    html = report.read_text()
    assert _static_checks(html) == 2  # trajectory.png and spectra.png, inline
    for piece in ("<h2>Table</h2>", "<h2>Load reports</h2>", "<h2>Conventions</h2>", "epoch_0003.pt",
                  "collapse-probe trainer checkpoint", "&plusmn;", "jackknife"):
        assert piece in html, piece


needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")


@needs_chromium
def test_chromium_renders_every_image_and_the_page_requests_nothing(invoke, run_dir, tmp_path):
    report = _track_report(invoke, run_dir, tmp_path)
    control = tmp_path / "control.html"  # the detector sees a page's requests: an external image is one
    control.write_text('<html><body><img src="http://example.invalid/x.png"></body></html>')
    control_urls, _ = _page_requests(control, tmp_path)
    assert control_urls == ["http://example.invalid/x.png"]
    urls, dom = _page_requests(report, tmp_path)
    assert urls == []
    assert "<title>2/2</title>" in dom  # both images decoded, with a size
    shot = tmp_path / "report.png"
    _chromium(report, tmp_path, "--window-size=1300,2600", f"--screenshot={shot}")
    assert shot.stat().st_size > 50_000  # the page with its plots, not a blank one
    keep = Path(__file__).parent / ".screenshots"
    if keep.is_dir():  # for a person to look at: mkdir tests/track/.screenshots
        shutil.copy(shot, keep / "track_report.png")


def test_spectrum_and_compare_write_the_same_report(invoke, run_dir, tmp_path):
    one = tmp_path / "one.html"
    code, _, err = invoke(["spectrum", run_dir / "epoch_0001.pt", *ARGS, "--report-html", one, "-q"])
    assert code == 0, err
    html = one.read_text()
    assert _static_checks(html) == 1 and "epoch_0001.pt" in html and "<h2>Conventions</h2>" in html
    several = tmp_path / "several.html"
    code, _, err = invoke(["compare", run_dir / "epoch_0001.pt", run_dir / "epoch_0003.pt", *ARGS,
                           "--report-html", several, "-q"])
    assert code == 0, err
    html = several.read_text()
    assert _static_checks(html) == 1
    assert html.count("collapse-probe trainer checkpoint") == 2  # each checkpoint's load report
    assert html.count("<td>epoch_0003.pt</td>") == 2  # its two layers in the table
    if CHROMIUM.exists():
        urls, dom = _page_requests(several, tmp_path)
        assert urls == [] and "<title>1/1</title>" in dom
