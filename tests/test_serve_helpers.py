"""Helpers for the ``edgeclip serve`` tests (no tests here): a real server in a subprocess.

``ServeProcess`` runs ``python -m edgeclip serve BUNDLE --port P ...`` on 127.0.0.1 with a
free port and waits for ``/health``. Every wait is bounded in tries and in seconds.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``edgeclip serve`` in a subprocess; use as a context manager or call ``stop``."""

    def __init__(self, bundle: Path | str, *args: str, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"serve-{self.port}.log"
        cmd = [
            sys.executable,
            "-m",
            "edgeclip",
            "serve",
            str(bundle),
            "--port",
            str(self.port),
            *args,
        ]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=60.0)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        for _ in range(int(START_TIMEOUT_S / 0.1)):
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"edgeclip serve exited with {self.proc.returncode}:\n{self.log()}"
                )
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.stop()
        raise AssertionError(
            f"edgeclip serve did not come up in {START_TIMEOUT_S} s:\n{self.log()}"
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict[str, Any]:
        return self.client.get("/health").json()

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 if absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        key = f"{name}{{{want}}}" if want else name
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(key + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_for(self, what: str, check: Any, timeout_s: float = 30.0) -> None:
        """Poll ``check()`` until true; bounded in count and time."""
        deadline = time.monotonic() + timeout_s
        for _ in range(int(timeout_s / 0.02) + 1):
            if check():
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log()}")

    def worker_pid(self) -> int:
        pid = self.health()["worker_pid"]
        assert pid, "the model worker is not running"
        return int(pid)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class StoppedWorker:
    """SIGSTOP the model worker for the ``with`` block: requests then pile up deterministically."""

    def __init__(self, server: ServeProcess) -> None:
        self.pid = server.worker_pid()

    def __enter__(self) -> StoppedWorker:
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: Any) -> None:
        os.kill(self.pid, signal.SIGCONT)


# -- inputs --------------------------------------------------------------------------------------


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def data_uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data): a decompression bomb's shape."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def raw_request(port: int, head: bytes, body_parts: list[bytes]) -> socket.socket:
    """Open a connection and send ``head`` and some body bytes; the caller finishes or waits."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(head)
    for part in body_parts:
        sock.sendall(part)
    return sock


def read_response(sock: socket.socket, limit_bytes: int = 1 << 22) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response until the server closes (Connection: close) or the limit."""
    data = b""
    for _ in range(10_000):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > limit_bytes or _complete(data):
            break
    sock.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data.partition(b"\r\n\r\n")[2]


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


# -- headless Chromium over the DevTools protocol (a pipe, no websocket library needed) ----------


def chromium_binary() -> str:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError(
        "Chromium is not installed, so the web page of `edgeclip serve` cannot be tested: run "
        "`bash scripts/ensure_chromium.sh` (installs Debian's chromium with apt-get) and rerun."
    )


class Chromium:
    """Headless Chromium driven with CDP over ``--remote-debugging-pipe`` (fds 3 and 4)."""

    def __init__(self, profile_dir: Path, window: tuple[int, int] = (1200, 820)) -> None:
        import fcntl

        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # park the child's ends above 100 so the dup2 onto 3 and 4 cannot clobber one another
        high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 100)
        high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 100)
        for fd in (to_chrome_r, from_chrome_w):
            os.close(fd)

        def child_fds() -> None:
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        args = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--remote-debugging-pipe",
                f"--user-data-dir={profile_dir}", f"--window-size={window[0]},{window[1]}",
                "--hide-scrollbars", "about:blank"]  # fmt: skip
        self.proc = subprocess.Popen(
            args, pass_fds=(3, 4), preexec_fn=child_fds,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(high_r)
        os.close(high_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def _read_message(self, deadline: float) -> dict:
        import select

        for _ in range(100_000):
            if b"\0" in self._buf:
                raw, _, self._buf = self._buf.partition(b"\0")
                return json.loads(raw)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._from_chrome], [], [], remaining)[0]:
                break
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise AssertionError("Chromium closed the DevTools pipe")
            self._buf += chunk
        raise AssertionError("Chromium did not answer in time")

    def send(self, method: str, timeout_s: float = 30.0, **params: Any) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        for _ in range(100_000):
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise AssertionError(f"CDP {method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise AssertionError(f"no reply to CDP {method}")

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.send("Page.enable")
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout_s: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout_s
        for _ in range(int(timeout_s / 0.05) + 1):
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise AssertionError(f"the page never satisfied: {expression}")

    def choose_file(self, selector: str, path: Path) -> None:
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", files=[str(path)], nodeId=node)

    def screenshot(self, out: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        Path(out).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout_s=10)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for fd in (self._to_chrome, self._from_chrome):
            os.close(fd)


PAGE_LABELS = [
    "a red square",
    "a blue square",
    "a red circle",
    "a green triangle",
    "a yellow diamond",
]


def classify_on_page(server_url: str, image: Path, labels: list[str], profile: Path,
                     screenshot: Path | None = None) -> list[list[Any]]:  # fmt: skip
    """Open the page, type ``labels``, pick ``image`` with the file chooser; return the rows shown."""
    browser = Chromium(profile)
    try:
        browser.open(server_url + "/")
        browser.wait_until("document.getElementById('model').textContent !== 'connecting...'")
        browser.evaluate(
            "document.getElementById('labels').value = " + json.dumps("\n".join(labels))
        )
        browser.choose_file("#file", image)
        state = browser.wait_until(
            "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
        )
        status = browser.evaluate("document.getElementById('status').textContent")
        assert state == "done", f"the page shows an error: {status}"
        rows = browser.evaluate(
            "JSON.stringify([...document.querySelectorAll('#results .row')].map("
            "r => [r.dataset.label, Number(r.dataset.probability), Number(r.dataset.cosine),"
            " r.querySelector('.bar span').style.width]))"
        )
        if screenshot is not None:
            browser.screenshot(screenshot)
        return json.loads(rows)
    finally:
        browser.close()


def main(argv: list[str] | None = None) -> int:
    """Write the docs screenshot: ``python tests/test_serve_helpers.py BUNDLE docs/serve-page.png``."""
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("bundle")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "shapes.png"
        _demo_image(image)
        with ServeProcess(args.bundle, "--preload", log_dir=Path(tmp)) as server:
            rows = classify_on_page(
                server.url, image, PAGE_LABELS, Path(tmp) / "profile", Path(args.out)
            )
    print(f"wrote {args.out}: {rows}")
    return 0


def _demo_image(path: Path) -> None:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (320, 240), (245, 245, 240))
    draw = ImageDraw.Draw(im)
    draw.rectangle((90, 50, 230, 190), fill=(210, 40, 40))
    im.save(path)


if __name__ == "__main__":
    sys.exit(main())
