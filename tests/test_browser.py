"""A real browser: headless Chromium renders pages offline and reports every image's rendered size.

:func:`render` is also what tests/test_pipeline_e2e.py runs on the toy repository's reports/report.html
and on `dvc plots show --html-template pipeline/vega/offline.html`. Every host name resolves to nothing
(``--host-resolver-rules``), so a page that needs the network shows it as a broken image or an empty
plot; the page's resource timings and its source are checked for http(s) requests as well. Skipped
when no Chromium is installed (tasks.sh test installs Debian's).
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

CHROMIUM = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")

#: Appended to a copy of the page: after load (and a little time for vega to draw), what was rendered.
_PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const images = [...document.images].map(i => ({src: i.src.slice(0, 60), complete: i.complete,
    natural: [i.naturalWidth, i.naturalHeight], shown: [i.getBoundingClientRect().width,
    i.getBoundingClientRect().height]}));
  const canvases = [...document.querySelectorAll("canvas, svg.marks")].map(c => {
    const r = c.getBoundingClientRect(); return [r.width, r.height]; });
  const requests = performance.getEntriesByType("resource").map(e => e.name);
  document.documentElement.setAttribute("data-probe", JSON.stringify({images, canvases, requests}));
}, 1500));
</script>"""
#: Attributes through which a page would load something (links in <a href> are not requests).
_LOADS = re.compile(r"""<(?:img|script|link|iframe|source|video|audio|embed)\b[^>]*\b(?:src|href)\s*=\s*"""
                    r"""["']?(https?:)""", re.IGNORECASE)


def external_loads(page: str) -> list[str]:
    """Tags in ``page`` that would fetch from a http(s) URL."""
    return [page[m.start(): m.start() + 120] for m in _LOADS.finditer(page)]


def render(page: Path, timeout: float = 120) -> dict:
    """Open ``page`` (a local file) in headless Chromium with no name resolution and return what the
    probe saw: ``images`` (src, complete, natural and shown size), ``canvases`` (vega's drawings) and
    ``requests`` (resource timing URLs). The probe goes into a copy next to ``page``, so relative paths
    resolve as they do for the page itself."""
    probe = page.with_name(f".probe.{page.name}")
    text = page.read_text(encoding="utf-8")
    probe.write_text(text.replace("</body>", _PROBE + "</body>") if "</body>" in text else text + _PROBE,
                     encoding="utf-8")
    try:
        out = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost", "--allow-file-access-from-files",
             "--virtual-time-budget=10000", "--window-size=1400,900", "--dump-dom", probe.resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout)
    finally:
        probe.unlink(missing_ok=True)
    m = re.search(r'data-probe="([^"]*)"', out.stdout)
    assert m, f"the page did not finish loading in Chromium:\n{out.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


def check_rendered(page: Path, min_images: int = 1, min_canvases: int = 0) -> dict:
    """Assert that every image of ``page`` rendered with a non-zero size and that nothing left the machine."""
    seen = render(page)
    images = seen["images"]
    assert len(images) >= min_images, f"{page}: {len(images)} image(s), expected at least {min_images}"
    broken = [i for i in images if not i["complete"] or 0 in i["natural"] or 0 in i["shown"]]
    assert not broken, f"{page}: images that did not render: {broken[:5]}"
    drawn = [c for c in seen["canvases"] if c[0] > 0 and c[1] > 0]
    assert len(drawn) >= min_canvases, f"{page}: {len(drawn)} drawn plot(s), expected {min_canvases}"
    remote = [r for r in seen["requests"] if r.startswith(("http:", "https:"))]
    assert not remote, f"{page}: requests to the network: {remote[:5]}"
    assert not external_loads(page.read_text(encoding="utf-8")), external_loads(page.read_text(encoding="utf-8"))
    return seen


def _png(width: int, height: int) -> bytes:
    """A solid grey PNG (no imaging library needed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_external_loads_finds_fetches_not_links():
    page = ('<a href="https://example.org">paper</a><img src="data:image/png;base64,AA">'
            '<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>')
    assert len(external_loads(page)) == 1


@needs_chromium
def test_embedded_images_render_and_broken_ones_are_caught(tmp_path):
    good = base64.b64encode(_png(40, 30)).decode()
    page = tmp_path / "page.html"
    page.write_text(f'<html><body><img src="data:image/png;base64,{good}"></body></html>')
    seen = check_rendered(page, min_images=1)
    assert seen["images"][0]["natural"] == [40, 30]
    page.write_text(f'<html><body><img src="data:image/png;base64,{good}"><img src="missing.png"></body></html>')
    with pytest.raises(AssertionError, match="did not render"):
        check_rendered(page)


@needs_chromium
def test_a_page_that_needs_the_network_is_caught(tmp_path):
    page = tmp_path / "page.html"
    page.write_text('<html><body><img src="https://example.org/figure.png"></body></html>')
    with pytest.raises(AssertionError):
        check_rendered(page)
