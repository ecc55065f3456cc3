"""A real ComfyUI server process and a client for its HTTP and websocket API (standard library only).

The test driver runs in the unit-test venv; the server runs in its own venv (see
`.ci/setup_comfyui.sh`). Everything here talks to 127.0.0.1 only.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

HOST = "127.0.0.1"


def _die_with_parent() -> None:
    """In the server's child process: get SIGTERM when the test process dies, however it dies
    (a killed CI job must not leave a ComfyUI behind)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    """The server did something a user would call broken (died, never answered, bad reply)."""


class PromptRejected(Exception):
    """`POST /prompt` answered 400: the prompt failed validation (`body` is the server's JSON)."""

    def __init__(self, status: int, body: dict):
        self.status, self.body = status, body
        super().__init__(f"HTTP {status}: {json.dumps(body)[:2000]}")

    @property
    def node_errors(self) -> dict:
        return self.body.get("node_errors") or {}

    def input_errors(self, node_id: str) -> list[tuple[str | None, str]]:
        """(input name, details) of each error ComfyUI attached to node `node_id`."""
        errs = (self.node_errors.get(node_id) or {}).get("errors") or []
        return [((e.get("extra_info") or {}).get("input_name"), str(e.get("details", ""))) for e in errs]

    def messages(self) -> list[str]:
        """Every error message and detail, top level and per node, as one flat list."""
        out = []
        err = self.body.get("error") or {}
        out += [str(err.get("message", "")), str(err.get("details", ""))]
        for node_err in self.node_errors.values():
            for e in node_err.get("errors", []):
                out += [str(e.get("message", "")), str(e.get("details", "")),
                        json.dumps(e.get("extra_info", {}))]
        return [m for m in out if m]


@dataclass
class PromptResult:
    prompt_id: str
    status: str  # "success", "error" or "interrupted"
    outputs: dict
    messages: list
    seconds: float  # wall time from queueing to completion, seen by the client

    def event(self, name: str) -> dict | None:
        for ev, data in self.messages:
            if ev == name:
                return data
        return None

    def cached_nodes(self) -> set[str]:
        """Nodes served from ComfyUI's cache in this run (not executed)."""
        return set((self.event("execution_cached") or {}).get("nodes") or [])

    def describe(self) -> str:
        err = self.event("execution_error")
        if err:
            tb = "".join(err.get("traceback") or [])[-3000:]
            return (f"{self.status}: node {err.get('node_id')} ({err.get('node_type')}) raised "
                    f"{err.get('exception_type')}: {err.get('exception_message')}\n{tb}")
        return f"{self.status} after {self.seconds:.1f}s; events {[ev for ev, _ in self.messages]}"

    def files(self, node_id: str, key: str = "images") -> list[dict]:
        return list((self.outputs.get(node_id) or {}).get(key) or [])


@dataclass
class ComfyServer:
    """One `python main.py` process of a ComfyUI tree, started and stopped by us."""

    python: Path
    root: Path  # the ComfyUI tree (its copy for this run)
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)  # set for the server process (e.g. SEEDVR2_*)
    port: int = 0
    proc: subprocess.Popen | None = None
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    # ------------------------------------------------------------------ process
    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self, timeout: float = 240.0) -> float:
        """Start the server and wait until it answers; returns the seconds it took."""
        self.port = self.port or free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", DO_NOT_TRACK="1")
        env.update(self.extra_env)
        cmd = [str(self.python), "main.py", "--cpu", "--listen", HOST, "--port", str(self.port),
               "--disable-auto-launch", *self.extra_args]
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.proc.returncode} during start-up\n"
                                  f"{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                return time.monotonic() - t0
            except (OSError, ServerError):
                pass
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise ServerError(f"ComfyUI did not answer on {self.url} within {timeout:.0f}s\n{self.log_tail()}")
            time.sleep(0.5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def rss_mb(self) -> float:
        """Resident set size of the server process (VmRSS from /proc), in MiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        raise ServerError(f"no VmRSS in /proc/{self.pid}/status")

    # ------------------------------------------------------------------ log
    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_text(self, since: int = 0) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_text().splitlines()[-lines:]
        return f"--- last {len(text)} lines of {self.log_path} ---\n" + "\n".join(text)

    # ------------------------------------------------------------------ HTTP
    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 30.0) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        status, data = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ServerError(f"GET {path}: HTTP {status}: {data[:500]!r}")
        return json.loads(data)

    def post_json(self, path: str, payload: Any, timeout: float = 30.0) -> tuple[int, Any]:
        status, data = self.request("POST", path, json.dumps(payload).encode(),
                                    {"Content-Type": "application/json"}, timeout)
        try:
            return status, (json.loads(data) if data else None)
        except json.JSONDecodeError:
            return status, data.decode("utf-8", "replace")

    def object_info(self, node_class: str | None = None) -> dict:
        if node_class is None:
            return self.get_json("/object_info", timeout=120)
        return self.get_json(f"/object_info/{urllib.parse.quote(node_class)}")[node_class]

    def upload_image(self, path: Path, name: str | None = None) -> str:
        """`POST /upload/image` (multipart, as the frontend does); returns the name to put in a loader."""
        boundary = uuid.uuid4().hex
        name = name or path.name
        body = b"".join([
            f"--{boundary}\r\n".encode(),
            f'Content-Disposition: form-data; name="image"; filename="{name}"\r\n'.encode(),
            b"Content-Type: application/octet-stream\r\n\r\n", path.read_bytes(), b"\r\n",
            f"--{boundary}\r\n".encode(),
            b'Content-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n',
            f"--{boundary}--\r\n".encode(),
        ])
        status, data = self.request("POST", "/upload/image", body,
                                    {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise ServerError(f"upload of {path} failed: HTTP {status}: {data[:500]!r}")
        reply = json.loads(data)
        return f"{reply['subfolder']}/{reply['name']}" if reply.get("subfolder") else reply["name"]

    def queue(self, prompt: dict) -> str:
        """`POST /prompt`; returns the prompt id or raises PromptRejected on a validation error."""
        status, body = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise PromptRejected(status, body if isinstance(body, dict) else {"error": {"message": str(body)}})
        if body.get("node_errors"):
            raise PromptRejected(status, body)
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0, t0: float | None = None) -> PromptResult:
        """Poll `/history/<id>` until the prompt is done."""
        t0 = time.monotonic() if t0 is None else t0
        while True:
            hist = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if hist and hist.get("status"):  # an entry appears once the prompt finished, however
                break
            if not self.alive():
                raise ServerError(f"ComfyUI died while running prompt {prompt_id}\n{self.log_tail()}")
            if time.monotonic() - t0 > timeout:
                self.interrupt()
                raise ServerError(f"prompt {prompt_id} not done after {timeout:.0f}s (interrupt sent)")
            time.sleep(0.1)
        messages = [tuple(m) for m in hist["status"].get("messages") or []]
        events = {ev for ev, _ in messages}
        status = ("interrupted" if "execution_interrupted" in events
                  else "error" if "execution_error" in events or hist["status"].get("status_str") == "error"
                  else "success")
        return PromptResult(prompt_id, status, hist.get("outputs") or {}, messages, time.monotonic() - t0)

    def run(self, prompt: dict, timeout: float = 600.0) -> PromptResult:
        t0 = time.monotonic()
        return self.wait(self.queue(prompt), timeout, t0)

    def interrupt(self) -> None:
        status, body = self.post_json("/interrupt", {})
        if status != 200:
            raise ServerError(f"POST /interrupt: HTTP {status}: {body}")

    def queue_state(self) -> tuple[list, list]:
        q = self.get_json("/queue")
        return q.get("queue_running") or [], q.get("queue_pending") or []

    def free(self) -> None:
        self.post_json("/free", {"unload_models": True, "free_memory": True})

    def websocket(self, timeout: float = 10.0) -> "WebSocket":
        """Events for prompts queued by this client (`executing`, `progress`, ...)."""
        return WebSocket(HOST, self.port, f"/ws?clientId={self.client_id}", timeout)


class WebSocket:
    """Just enough of RFC 6455 to read ComfyUI's event stream: text frames as JSON dicts."""

    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, host: str, port: int, path: str, timeout: float):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = bytearray()
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        accept = base64.b64encode(hashlib.sha1((key + self.GUID).encode()).digest()).decode()
        if b" 101 " not in head.split(b"\r\n")[0] or accept.encode() not in head:
            raise ServerError(f"websocket handshake failed: {head[:300]!r}")

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("websocket closed by the server")
        self.buf += chunk

    def _frame(self, deadline: float) -> tuple[int, bool, bytes]:
        while True:
            if len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                n, off = b1 & 0x7F, 2
                if n == 126 and len(self.buf) >= 4:
                    n, off = struct.unpack(">H", self.buf[2:4])[0], 4
                elif n == 127 and len(self.buf) >= 10:
                    n, off = struct.unpack(">Q", self.buf[2:10])[0], 10
                elif n >= 126:
                    n = None
                if n is not None and len(self.buf) >= off + n:
                    payload = bytes(self.buf[off:off + n])
                    del self.buf[:off + n]
                    return b0 & 0x0F, bool(b0 & 0x80), payload
            self._fill(deadline)

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        masked = (int.from_bytes(payload, "little") ^ int.from_bytes(mask * (n // 4 + 1), "little")
                  ).to_bytes(4 * (n // 4 + 1), "little")[:n] if n else b""
        self.sock.sendall(header + mask + masked)

    def send_json(self, message: Any) -> None:
        self._send(0x1, json.dumps(message).encode())

    def events(self, timeout: float) -> Iterator[dict]:
        """Yield JSON events until `timeout` seconds pass (then stop quietly)."""
        deadline = time.monotonic() + timeout
        yield from self._messages(deadline)

    def _messages(self, deadline: float) -> Iterator[dict]:
        message, msg_op = b"", None
        while True:
            try:
                op, fin, payload = self._frame(deadline)
            except TimeoutError:
                return
            if op == 0x9:  # ping
                self._send(0xA, payload)
                continue
            if op == 0x8:
                raise ConnectionError("websocket closed by the server")
            if op in (0x1, 0x2):
                message, msg_op = payload, op
            elif op == 0x0:
                message += payload
            else:
                continue
            if fin:
                if msg_op == 0x1:
                    yield json.loads(message)
                message, msg_op = b"", None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send(0x8, struct.pack(">H", 1000))
        self.sock.close()
