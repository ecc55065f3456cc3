"""Headless Chromium (Debian's `chromium` package) driven over the DevTools protocol, with nothing
but the standard library and the websocket client of `harness`.

One browser process per `Chromium`, one page. The page's console errors and uncaught exceptions
are collected (`problems`), so a test can show what the frontend complained about. The process
is started with the flags this machine needs (no sandbox as root, no GPU, no background network
traffic: the machine has no network beside the package registries) and a fresh profile.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from .harness import HOST, WebSocket, _die_with_parent

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--no-default-browser-check",
         # The frontend asks the internet for release notes and model sizes: answer every name but
         # the loopback's "not found" inside the browser, so no lookup ever leaves the machine.
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"]
CANDIDATES = ("chromium", "chromium-browser")


def find_chromium() -> str | None:
    """Debian's Chromium (SEEDVR2_CHROMIUM overrides); None when it is not installed."""
    explicit = os.environ.get("SEEDVR2_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(RuntimeError):
    """Chromium died, never answered, or a DevTools call failed."""


class Chromium:
    """A headless Chromium with one page of `width` x `height` CSS pixels."""

    def __init__(self, executable: str, profile: Path, log_path: Path, width: int = 1600, height: int = 1000):
        self.executable, self.profile, self.log_path = executable, profile, log_path
        self.width, self.height = width, height
        self.proc: subprocess.Popen | None = None
        self.ws: WebSocket | None = None
        self._next_id = 0
        self.problems: list[str] = []  # console errors and uncaught exceptions of the page

    # ------------------------------------------------------------------ process
    def start(self, timeout: float = 60.0) -> None:
        self.profile.mkdir(parents=True, exist_ok=True)
        cmd = [self.executable, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-address=127.0.0.1",
               "--remote-debugging-port=0", f"--window-size={self.width},{self.height}", "about:blank"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise BrowserError(f"chromium exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium wrote no DevToolsActivePort within {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://{HOST}:{port}/json/list", timeout=10) as resp:
            pages = [t for t in json.load(resp) if t.get("type") == "page"]
        if not pages:
            raise BrowserError("chromium has no page target")
        path = "/" + pages[0]["webSocketDebuggerUrl"].split("/", 3)[3]
        self.ws = WebSocket(HOST, port, path, timeout=10)
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})

    def stop(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    # ------------------------------------------------------------------ protocol
    def send(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        """One DevTools command; returns its result (events seen meanwhile are recorded)."""
        assert self.ws is not None, "browser not started"
        self._next_id += 1
        msg_id = self._next_id
        self.ws.send_json({"id": msg_id, "method": method, "params": params or {}})
        deadline = time.monotonic() + timeout
        for message in self.ws._messages(deadline):
            if message.get("id") == msg_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._record(message)
        raise BrowserError(f"{method}: no answer within {timeout:.0f}s")

    def _record(self, event: dict) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = (details.get("exception") or {}).get("description") or details.get("text", "")
            self.problems.append(f"uncaught: {text[:500]}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.problems.append(f"console.error: {args[:500]}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.problems.append(f"{entry.get('source')}: {entry.get('text', '')[:300]} {entry.get('url', '')}")

    def evaluate(self, expression: str, timeout: float = 60.0) -> Any:
        """The JSON value of `expression` in the page (promises awaited); page errors raise."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True, "timeout": int(timeout * 1000)},
                           timeout=timeout + 5)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = (details.get("exception") or {}).get("description") or details.get("text")
            raise BrowserError(f"page raised: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float, what: str, poll: float = 0.25) -> Any:
        """Poll until `expression` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout:.0f}s waiting for {what}; page problems: "
                                   f"{self.problems[-10:]}")
            time.sleep(poll)

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def screenshot(self, path: Path, *, clip: dict | None = None, quality: int | None = None) -> Path:
        """PNG (or JPEG when `path` ends in .jpg) of the viewport or of `clip` (x, y, width, height,
        scale in CSS pixels)."""
        params: dict[str, Any] = {"format": "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "png"}
        if quality is not None:
            params["quality"] = quality
        if clip is not None:
            params["clip"] = {"scale": 1, **clip}
        data = self.send("Page.captureScreenshot", params, timeout=120)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def mouse(self, kind: str, x: float, y: float, button: str = "none") -> None:
        """Dispatch a mouse event (kind: mouseMoved, mousePressed, mouseReleased) at page coordinates."""
        self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": button,
                                               "clickCount": 1 if button != "none" else 0})
