"""The HTML report as a person would see it: loaded in headless Chromium (tests/chromium.py).

The harness is first tried on tiny hand-written pages, good and broken, so that we know it can fail;
then `twinkles-hpc report` runs on the Level 2 run and its index and linked per-object pages must
load with every image, no console error and no broken local link. Screenshots: docs/testing.md.

Without Chromium these tests skip, unless TWINKLES_TEST_BROWSER_REQUIRED=1 (CI), when they fail.
"""
import os
import shutil
import struct
import time
import zlib

import numpy as np
import pytest

from chromium import Chromium, ChromiumError, find_chromium, local_path
from conftest import cli

#: Pages of the report loaded in the browser (the index first); further links are only checked to exist.
MAX_PAGES = 20
#: Seconds for the whole browser part of the report test.
BROWSER_BUDGET = 120.0
RED = (255, 0, 0)


def require_chromium():
    if find_chromium():
        return
    msg = "Chromium not found: apt-get install chromium (or .ci/chromium.sh), or set TWINKLES_CHROMIUM"
    if os.environ.get("TWINKLES_TEST_BROWSER_REQUIRED") == "1":
        pytest.fail(msg + " (TWINKLES_TEST_BROWSER_REQUIRED=1)")
    pytest.skip(msg)


def png_bytes(width, height, rgb):
    """A solid-colour 8-bit RGB PNG."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def read_png(path):
    """(height, width, 3) uint8 pixels."""
    import matplotlib.image
    img = matplotlib.image.imread(path)
    return np.round(img[..., :3] * 255).astype(np.uint8) if img.dtype != np.uint8 else img[..., :3]


def html(body, title="t"):
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body>{body}</body></html>")


def save_artifact(path):
    """Copy a screenshot to $TWINKLES_TEST_ARTIFACTS (when set), where CI keeps it."""
    out = os.environ.get("TWINKLES_TEST_ARTIFACTS")
    if out:
        os.makedirs(out, exist_ok=True)
        shutil.copy(path, os.path.join(out, path.name))


# -- the harness ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    require_chromium()
    with Chromium(timeout=20) as b:
        yield b


@pytest.fixture
def site(tmp_path):
    """A tiny static site: a red 40 x 40 PNG and a second page."""
    (tmp_path / "red.png").write_bytes(png_bytes(40, 40, RED))
    (tmp_path / "other.html").write_text(html("<p>other</p>"))
    return tmp_path


@pytest.mark.timeout(60)
def test_good_page_is_clean_and_screenshot_shows_it(browser, site):
    (site / "good.html").write_text(html(
        "<h1 id='top'>Report</h1><div><img src='red.png' alt='red'></div>"
        "<div style='margin-top:3000px'><img loading='lazy' src='red.png'></div>"
        "<a href='other.html'>other</a> <a href='#top'>top</a>"
        " <a href='red.png'>png</a> <a href='https://example.org/'>outside</a>"))
    page = browser.load(site / "good.html", screenshot=site / "shots" / "good.png")
    assert page.problems() == [] and page.warnings == []
    assert len(page.images) == 2 and page.local_pages == [site / "other.html", site / "good.html"]
    assert page.size[1] > 3000
    pixels = read_png(page.screenshot)
    assert pixels.shape[0] >= page.size[1] and pixels.shape[1] >= page.size[0] - 1  # the whole page
    red = np.all(pixels == RED, axis=-1)
    assert red[:200].sum() >= 40 * 40 and red[200:].sum() >= 40 * 40                   # both images drawn
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2                          # text as well


@pytest.mark.timeout(60)
def test_missing_image_is_reported(browser, site):
    (site / "p.html").write_text(html("<img src='red.png'><img src='plots/missing.png'>"))
    page = browser.load(site / "p.html")
    assert page.missing_images == [(site / "plots" / "missing.png").as_uri()]
    assert any("ERR_FILE_NOT_FOUND" in e and "missing.png" in e for e in page.errors), page.errors


@pytest.mark.timeout(60)
def test_console_error_and_warning_are_reported(browser, site):
    (site / "p.html").write_text(html("<script>console.error('x'); console.warn('careful');</script>"))
    page = browser.load(site / "p.html")
    assert page.errors == ["console.error: x"] and page.warnings == ["console.warning: careful"]
    assert page.problems() == ["error: console.error: x"]


@pytest.mark.timeout(60)
def test_thrown_exceptions_are_reported(browser, site):
    (site / "p.html").write_text(html(
        "<script>throw new Error('at load');</script>"
        "<script>setTimeout(() => { null.x; }, 0);</script>"))
    page = browser.load(site / "p.html")
    assert len(page.errors) == 2, page.errors
    assert "Error: at load" in page.errors[0] and "TypeError" in page.errors[1]


@pytest.mark.timeout(60)
def test_broken_local_links_are_reported(browser, site):
    (site / "p.html").write_text(html(
        "<a href='other.html'>ok</a><a href='objects/7.html'>gone</a><a href='#nowhere'>frag</a>"))
    page = browser.load(site / "p.html")
    assert page.missing_links == [(site / "objects" / "7.html").as_uri(),
                                  (site / "p.html").as_uri() + "#nowhere"]
    assert page.errors == []


@pytest.mark.timeout(60)
def test_a_page_that_never_loads_times_out(site):
    require_chromium()
    (site / "p.html").write_text(html("<script>for (;;) {}</script>"))
    with Chromium(timeout=20) as b:
        b.timeout = 3.0             # for the load, not for a start slowed by a busy machine
        t0 = time.monotonic()
        with pytest.raises(ChromiumError, match="load event"):
            b.load(site / "p.html")
        assert time.monotonic() - t0 < 10


@pytest.mark.timeout(60)
def test_a_browser_that_dies_is_an_error(tmp_path):
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\necho 'cannot open display' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(ChromiumError, match="exited(.|\n)*cannot open display"), Chromium(binary=str(fake)):
        pass


def test_missing_chromium_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TWINKLES_CHROMIUM", "/nonexistent/chromium")
    assert find_chromium() is None
    with pytest.raises(ChromiumError, match="Chromium not found"):
        Chromium()


# -- the report --------------------------------------------------------------------------------------
def crawl(browser, index, shots, max_pages=MAX_PAGES, budget=BROWSER_BUDGET):
    """Load index and the report pages it links to (breadth first, at most max_pages); returns the
    Pages. Screenshots of the index and of the first linked page go to shots/."""
    root = index.parent.resolve()
    todo, seen, pages = [index.resolve()], {index.resolve()}, []
    deadline = time.monotonic() + budget
    while todo and len(pages) < max_pages:
        assert time.monotonic() < deadline, f"the report took over {budget} s to browse"
        path = todo.pop(0)
        shot = shots / ("report-index.png", "report-page.png")[len(pages)] if len(pages) < 2 else None
        page = browser.load(path, screenshot=shot)
        pages.append(page)
        for p in page.local_pages:
            p = p.resolve()
            if p not in seen and p.exists() and p.is_relative_to(root):
                seen.add(p)
                todo.append(p)
    return pages


def test_report_in_browser(request, tmp_path):
    require_chromium()      # before the Level 2 run, which takes a while
    run = request.getfixturevalue("level2_run")
    cli("report", run, check=True)
    index = run / "report" / "index.html"
    assert index.is_file()
    with Chromium(timeout=30) as b:
        pages = crawl(b, index, tmp_path)
    problems = [f"{p.url}: {line}" for p in pages for line in p.problems()]
    assert problems == [], "\n".join(problems)
    front = pages[0]
    assert front.images, "the index shows no image"
    assert len(pages) > 1, "the index links to no report page"
    for p in pages:   # a report opened from disk must not need the network
        remote = [u for u in p.images if local_path(u) is None and not u.startswith("data:")]
        assert remote == [], f"{p.url} loads images from the network: {remote}"
    for shot in tmp_path.glob("report-*.png"):
        assert len(np.unique(read_png(shot).reshape(-1, 3), axis=0)) > 2, f"{shot} is blank"
        save_artifact(shot)
    print(f"{len(pages)} report pages clean; screenshots: {sorted(map(str, tmp_path.glob('report-*.png')))}")
