"""A small driver of headless Chromium for the browser tests, stdlib only.

Chromium runs with `--remote-debugging-pipe`: it reads DevTools-protocol (CDP) commands, JSON
messages each ended by a NUL byte, from its fd 3 and writes replies and events the same way to its
fd 4. We attach to one page target in flat-session mode and, per page, navigate, wait for the load
event, then ask the page for its broken images, its links and a full-page screenshot while the
console errors, uncaught exceptions and failed loads (Log domain) collect as events. Every wait has a
deadline: a stuck or crashed browser is an exception, never a hang.

    with Chromium() as browser:
        page = browser.load("file:///.../index.html", screenshot="index.png")
        assert not page.errors and not page.missing_images and not page.missing_links
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

#: Flags for a closed network and a throw-away profile: no first-run UI, and no background requests
#: (updates, sync, safe browsing) whose failures would only add noise.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--disable-extensions", "--no-default-browser-check",
         "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe"]

#: The page's images, and those that did not load, after giving lazy ones the chance to (a report may
#: use loading="lazy"; a person scrolling would load them).
IMAGES_JS = """(async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = "eager"; });
  const settle = Promise.all(imgs.map(i => i.decode().catch(() => null)));
  await Promise.race([settle, new Promise(r => setTimeout(r, %d))]);
  const src = i => i.currentSrc || i.src;
  return [imgs.map(src), imgs.filter(i => !i.complete || i.naturalWidth === 0).map(src)];
})()"""
LINKS_JS = "[...document.querySelectorAll('a[href]')].map(a => a.href)"
IDS_JS = "[...document.querySelectorAll('[id],a[name]')].map(e => e.id || e.name)"
SIZE_JS = ("[Math.ceil(Math.max(document.documentElement.scrollWidth, document.body ? "
           "document.body.scrollWidth : 0)), Math.ceil(Math.max(document.documentElement.scrollHeight,"
           " document.body ? document.body.scrollHeight : 0))]")


class ChromiumError(RuntimeError):
    """Chromium is missing, died, answered with an error, or did not answer in time."""


def find_chromium():
    """$TWINKLES_CHROMIUM, else /usr/bin/chromium, else chromium, chromium-browser or google-chrome
    on PATH; None when there is none."""
    env = os.environ.get("TWINKLES_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else shutil.which(env)
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def local_path(url):
    """The file a file:// URL names (without query or fragment), else None."""
    u = urlsplit(url)
    return Path(unquote(u.path)) if u.scheme == "file" else None


@dataclasses.dataclass
class Page:
    """What a person would have seen of one page."""
    url: str
    errors: list            # console.error/assert, uncaught exceptions, Log entries of level error
    warnings: list          # console.warn and Log warnings: shown, for the reader to judge
    images: list            # src of every <img>
    missing_images: list    # src of each <img> that did not load
    links: list             # every <a href>, absolute
    missing_links: list     # local links whose file does not exist, or whose #fragment is not on the page
    screenshot: Path | None
    size: tuple             # the page's full (width, height) in CSS pixels

    @property
    def local_pages(self):
        """The local .html files this page links to, each once, without fragments."""
        out = []
        for url in self.links:
            p = local_path(url)
            if p is not None and p.suffix.lower() in (".html", ".htm") and p not in out:
                out.append(p)
        return out

    def problems(self):
        """One line per problem; empty when the page is clean."""
        return ([f"error: {e}" for e in self.errors]
                + [f"missing image: {s}" for s in self.missing_images]
                + [f"broken link: {s}" for s in self.missing_links])


# A child that maps two inherited descriptors onto fds 3 and 4 and becomes Chromium. Doing this in a
# fresh process (not preexec_fn) leaves subprocess's own descriptors alone, whatever their numbers.
_TRAMPOLINE = ("import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); "
               "os.dup2(r, 3); os.dup2(w, 4); os.close(r); os.close(w); "
               "os.execv(sys.argv[3], sys.argv[3:])")


class Chromium:
    """One headless Chromium with one page, spoken to over the DevTools pipe.

    timeout: seconds allowed for each command, and for each page load as a whole.
    """

    def __init__(self, binary=None, timeout=30.0, width=1280, height=800):
        self.binary = binary or find_chromium()
        if not self.binary:
            raise ChromiumError("Chromium not found: install Debian's `chromium` (apt-get install "
                                "chromium) or set TWINKLES_CHROMIUM to the browser's executable")
        self.timeout = timeout
        self.width, self.height = width, height
        self._next_id = 0
        self._buf = b""
        self._events = []
        self.proc = self._profile = None
        self._to_child = self._from_child = None

    # -- process --------------------------------------------------------------------------------
    def start(self):
        self._profile = tempfile.TemporaryDirectory(prefix="twinkles-chromium-")
        self.log_path = Path(self._profile.name) / "chromium.log"
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # high numbers, so that the trampoline's dup2 onto 3 and 4 cannot clobber one with the other
        child_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_child_r)
        os.close(from_child_w)
        profile = Path(self._profile.name) / "profile"
        cmd = [sys.executable, "-c", _TRAMPOLINE, str(child_r), str(child_w), self.binary, *FLAGS,
               f"--user-data-dir={profile}", f"--window-size={self.width},{self.height}", "about:blank"]
        try:
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             pass_fds=(child_r, child_w), start_new_session=True)
        finally:
            os.close(child_r)
            os.close(child_w)
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=self.session)
        return self

    def close(self):
        """Browser.close, then wait for the process (killing it after 10 s); idempotent."""
        if self.proc is not None:
            try:
                if self.proc.poll() is None:
                    self.send("Browser.close", timeout=5)
            except ChromiumError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):     # its own session: launcher, children
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            self.proc = None
        for fd in (self._to_child, self._from_child):
            if fd is not None:
                os.close(fd)
        self._to_child = self._from_child = None
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()

    def _log_tail(self):
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    # -- protocol -------------------------------------------------------------------------------
    def send(self, method, session=None, timeout=None, **params):
        """Send one command and return its result, queueing the events that arrive meanwhile."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        deadline = time.monotonic() + (timeout or self.timeout)
        while data:
            if not select.select([], [self._to_child], [], max(0.0, deadline - time.monotonic()))[1]:
                raise ChromiumError(f"{method}: Chromium did not read the command in time")
            try:
                data = data[os.write(self._to_child, data):]
            except BrokenPipeError:
                raise ChromiumError(f"{method}: Chromium has exited\n{self._log_tail()}") from None
        want = self._next_id
        while True:
            reply = self._receive(deadline, method)
            if reply.get("id") == want:
                if "error" in reply:
                    raise ChromiumError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def _receive(self, deadline, what):
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise ChromiumError(f"{what}: no answer from Chromium in time")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise ChromiumError(f"{what}: Chromium has exited\n{self._log_tail()}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def wait_event(self, method, deadline, what):
        """The first queued or arriving event `method` of our page session."""
        while True:
            for i, ev in enumerate(self._events):
                if ev["method"] == method and ev.get("sessionId") == self.session:
                    return self._events.pop(i)
            msg = self._receive(deadline, what)
            if "method" in msg:
                self._events.append(msg)

    def evaluate(self, expression, timeout=None):
        r = self.send("Runtime.evaluate", session=self.session, timeout=timeout, expression=expression,
                      returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise ChromiumError(f"evaluating {expression[:60]!r}: {_exception_text(r['exceptionDetails'])}")
        return r["result"].get("value")

    # -- pages ----------------------------------------------------------------------------------
    def load(self, url, screenshot=None):
        """Open url, wait for its load event, and return a Page; screenshot: a path for a PNG of the
        whole page."""
        url = url.as_uri() if isinstance(url, Path) else url
        deadline = time.monotonic() + self.timeout
        self._events.clear()
        nav = self.send("Page.navigate", session=self.session, url=url)
        if nav.get("errorText"):
            raise ChromiumError(f"{url}: {nav['errorText']}")
        self.wait_event("Page.loadEventFired", deadline, f"waiting for the load event of {url}")
        images, missing = self.evaluate(IMAGES_JS % (max(1, deadline - time.monotonic()) * 500))
        links = self.evaluate(LINKS_JS)
        ids = set(self.evaluate(IDS_JS))
        size = tuple(self.evaluate(SIZE_JS))
        shot = self._screenshot(Path(screenshot), size) if screenshot else None
        self._drain()
        errors, warnings = _messages(self._events)
        return Page(url=url, errors=errors, warnings=warnings, images=images, missing_images=missing,
                    links=links, missing_links=_missing_links(url, links, ids), screenshot=shot, size=size)

    def _screenshot(self, path, size, max_height=16384):
        """Grow the viewport to the whole page (capped), capture, and restore the viewport."""
        w, h = max(self.width, size[0]), min(max(self.height, size[1]), max_height)
        self.send("Emulation.setDeviceMetricsOverride", session=self.session, width=w, height=h,
                  deviceScaleFactor=1, mobile=False)
        try:
            png = self.send("Page.captureScreenshot", session=self.session, format="png",
                            captureBeyondViewport=True)["data"]
        finally:
            self.send("Emulation.clearDeviceMetricsOverride", session=self.session)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(png))
        return path

    def _drain(self):
        """Take in the events already sent (e.g. console messages of late scripts)."""
        self.send("Runtime.evaluate", session=self.session, expression="0")


def _exception_text(details):
    ex = details.get("exception") or {}
    return ex.get("description") or details.get("text", "exception")


def _messages(events):
    """(errors, warnings) as readable lines from the queued Runtime and Log events."""
    errors, warnings = [], []
    for ev in events:
        p, m = ev.get("params", {}), ev["method"]
        if m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert", "warning"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            (warnings if p["type"] == "warning" else errors).append(f"console.{p['type']}: {text}")
        elif m == "Runtime.exceptionThrown":
            errors.append(f"uncaught exception: {_exception_text(p['exceptionDetails'])}")
        elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
            e = p["entry"]
            line = f"{e['source']} {e['level']}: {e['text']}" + (f" ({e['url']})" if e.get("url") else "")
            (errors if e["level"] == "error" else warnings).append(line)
    return errors, warnings


def _missing_links(page_url, links, ids):
    """Local links to files that do not exist, and #fragments of this page that name no element."""
    here = local_path(page_url)
    out = []
    for url in links:
        path = local_path(url)
        if path is None:
            continue
        frag = urlsplit(url).fragment
        if not path.exists() or (frag and path == here and unquote(frag) not in ids):
            out.append(url)
    return out
