"""``edgeclip serve``'s model lifecycle and process behaviour: idle unload and reload, a full
queue (429), a crashed worker, the API key, and SIGTERM finishing the requests in flight.

Requests are made to pile up deterministically by SIGSTOP-ing the model worker, never by
timing; every wait is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("uvicorn", reason="the serve extra is needed: pip install -e '.[serve]'")

from test_serve_helpers import (  # noqa: E402
    ServeProcess,
    StoppedWorker,
    data_uri,
    png_bytes,
    raw_request,
    read_response,
)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("serve-logs")


@pytest.fixture(scope="module")
def server(micro_bundle, logs):
    with ServeProcess(micro_bundle, "--idle-ttl", "0", "--max-queue", "2", log_dir=logs) as s:
        yield s


def _embed(server, text: str) -> tuple[int, dict]:
    r = server.client.post("/v1/embeddings", json={"input": [text]})
    return r.status_code, r.json()


def test_idle_unload_gives_memory_back_and_reloads(micro_bundle, logs):
    with ServeProcess(micro_bundle, "--idle-ttl", "1", log_dir=logs) as server:
        status, first = _embed(server, "a cat")
        assert status == 200 and server.metric("edgeclip_model_loads_total") == 1
        server.wait_for("the idle unload", lambda: not server.health()["loaded"])
        record = server.health()["last_unload"]
        assert record["reason"] == "idle for 1 s"
        assert record["worker_rss_before_bytes"] > 0
        # the worker's whole resident set is gone: what is left is the server process alone
        assert (
            record["rss_after_bytes"]
            < record["rss_before_bytes"] - record["worker_rss_before_bytes"] // 2
        )
        assert server.metric("edgeclip_resident_memory_bytes", process="worker") == 0
        status, again = _embed(server, "a cat")
        assert status == 200 and server.metric("edgeclip_model_loads_total") == 2
        assert again["data"][0]["embedding"] == first["data"][0]["embedding"]


def test_text_alone_opens_the_text_tower_and_an_idle_image_tower_is_unloaded(micro_bundle, logs):
    """Search queries never open the image tower; --image-idle-ttl unloads it alone (a new
    worker holding the text tower), and both towers answer as before afterwards."""
    image = {"input": [data_uri(png_bytes((200, 30, 30)))], "modality": "image"}
    with ServeProcess(micro_bundle, "--idle-ttl", "0", "--image-idle-ttl", "1", log_dir=logs) as s:
        status, text_before = _embed(s, "a cat")
        assert status == 200 and s.health()["towers"] == ["text"]
        assert s.metric("edgeclip_tower_loaded", tower="image") == 0
        r = s.client.post("/v1/embeddings", json=image)
        assert r.status_code == 200 and s.health()["towers"] == ["image", "text"]
        image_before, first_pid = r.json()["data"][0]["embedding"], s.worker_pid()
        s.wait_for("the image tower's unload", lambda: s.health()["towers"] == ["text"])
        record = s.health()["last_unload"]
        assert record["reason"] == "no image for 1 s" and record["worker_pid"] == first_pid
        assert record["towers_unloaded"] == ["image"] and record["towers_kept"] == ["text"]
        assert 0 < record["worker_rss_after_bytes"] < record["worker_rss_before_bytes"]
        assert s.worker_pid() != first_pid and s.health()["loaded"]
        assert s.metric("edgeclip_image_tower_unloads_total") == 1
        assert s.metric("edgeclip_model_unloads_total") == 0
        status, text_after = _embed(s, "a cat")
        assert status == 200 and s.health()["towers"] == ["text"]
        assert text_after["data"][0]["embedding"] == text_before["data"][0]["embedding"]
        r = s.client.post("/v1/embeddings", json=image)
        assert r.status_code == 200 and r.json()["data"][0]["embedding"] == image_before


@pytest.mark.parametrize("flag, value, message", [
    ("--image-idle-ttl", "-1", "--image-idle-ttl must be a finite number >= 0 (0 means never), got -1.0."),
    ("--idle-ttl", "nan", "--idle-ttl must be a finite number >= 0 (0 means never), got nan."),
    ("--body-timeout", "0", "--body-timeout must be a finite number > 0, got 0.0."),
])  # fmt: skip
def test_a_bad_duration_is_refused_naming_the_flag(micro_bundle, flag, value, message):
    run = subprocess.run([sys.executable, "-m", "edgeclip", "serve", str(micro_bundle), flag, value],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 2 and run.stderr.strip() == f"edgeclip serve: {message}"


def test_full_queue_answers_429_and_loses_nothing(server):
    assert _embed(server, "load the model")[0] == 200
    batches = server.metric("edgeclip_batch_size_count", modality="text")
    results: dict[str, tuple[int, dict]] = {}

    def send(name: str, texts: list[str]) -> None:
        r = server.client.post("/v1/embeddings", json={"input": texts})
        results[name] = (r.status_code, r.json())

    with StoppedWorker(server):
        running = threading.Thread(target=send, args=("running", ["one"]))
        running.start()
        server.wait_for("the first batch", lambda: server.metric(
            "edgeclip_batch_size_count", modality="text") == batches + 1)  # fmt: skip
        queued = threading.Thread(target=send, args=("queued", ["two", "three"]))
        queued.start()
        server.wait_for(
            "two queued texts", lambda: server.metric("edgeclip_queue_depth", modality="text") == 2
        )
        send("refused", ["four"])  # the queue holds 2 (--max-queue 2): no room
    for t in (running, queued):
        t.join(timeout=60)
    status, body = results["refused"]
    assert status == 429 and body["error"]["code"] == "queue_full"
    assert "--max-queue" in body["error"]["message"]
    assert results["running"][0] == results["queued"][0] == 200
    assert len(results["queued"][1]["data"]) == 2


def test_a_killed_worker_is_replaced(server):
    assert _embed(server, "load")[0] == 200
    old = server.worker_pid()
    os.kill(old, signal.SIGKILL)
    server.wait_for("the worker to die", lambda: not os.path.exists(f"/proc/{old}") or _zombie(old))
    status, _ = _embed(server, "after the crash")
    assert status == 200
    assert server.worker_pid() != old


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_api_key_is_required_and_compared(micro_bundle, logs, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    with ServeProcess(micro_bundle, "--api-key-file", str(key_file), log_dir=logs) as s:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic s3cret-key"},
        ):
            r = s.client.post("/v1/embeddings", json={"input": "x"}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
        assert s.client.get("/metrics").status_code == 401
        assert s.client.get("/health").json()["auth_required"] is True  # public, for the page
        assert s.client.get("/ping").text == "pong"
        ok = s.client.post(
            "/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer s3cret-key"}
        )
        assert ok.status_code == 200


def test_sigterm_finishes_requests_in_flight(micro_bundle, logs):
    s = ServeProcess(micro_bundle, "--preload", log_dir=logs)
    try:
        body = json.dumps({"input": ["in flight"]}).encode()
        head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
        with StoppedWorker(s):
            in_model = raw_request(s.port, head, [body])  # reaches the (stopped) model
            half_sent = raw_request(s.port, head, [body[:5]])  # still sending its body
            s.wait_for("both requests in flight", lambda: s.metric(
                "edgeclip_requests_in_flight", endpoint="/v1/embeddings") == 2)  # fmt: skip
            s.proc.send_signal(signal.SIGTERM)
            s.wait_for("shutdown to begin", lambda: "Shutting down" in s.log())
            half_sent.sendall(body[5:])
        answers = [read_response(sock) for sock in (in_model, half_sent)]
        assert [status for status, _ in answers] == [200, 200]
        vectors = [json.loads(b)["data"][0]["embedding"] for _, b in answers]
        assert np.array_equal(vectors[0], vectors[1])
        # uvicorn re-raises the signal once it has shut down cleanly, so the status says SIGTERM
        assert s.proc.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in s.log()
    finally:
        s.stop()


def test_ctrl_c_with_no_shutdown_timeout_exits_at_once_without_a_traceback(micro_bundle, logs):
    """--shutdown-timeout 0 cancels a request whose body never ends (it once meant "wait
    forever": 0 became None), and Ctrl-C's re-raised SIGINT is an exit status, not a traceback."""
    s = ServeProcess(micro_bundle, "--preload", "--shutdown-timeout", "0", "--body-timeout", "120",
                     log_dir=logs)  # fmt: skip
    try:
        head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n")  # fmt: skip
        stuck = raw_request(s.port, head, [b'{"input": '])
        s.wait_for("the request in flight", lambda: s.metric(
            "edgeclip_requests_in_flight", endpoint="/v1/embeddings") == 1)  # fmt: skip
        s.proc.send_signal(signal.SIGINT)
        # bounded: the body timeout alone is 120 s. 130 when uvicorn re-raises the SIGINT it
        # captured, 0 when it returns without doing so (seen in a clean-clone CI run)
        assert s.proc.wait(timeout=60) in (0, 130)
        stuck.close()
        assert "Traceback" not in s.log() and "KeyboardInterrupt" not in s.log()
        assert "Application shutdown complete" in s.log()
    finally:
        s.stop()


def test_in_process_unload_measures_what_the_runtime_keeps(micro_bundle):
    from edgeclip.serve.lifecycle import ModelHost
    from edgeclip.serve.metrics import Metrics
    from edgeclip.serve.worker import ModelSpec

    async def cycle() -> dict:
        host = ModelHost(
            ModelSpec(str(micro_bundle)), idle_ttl_s=None, in_process=True, metrics=Metrics()
        )
        emb, counts = await host.call("text", ["a cat", "a dog"])
        assert emb.shape[0] == 2 and counts[0] == 4  # start, "a", "cat", end
        record = await host.unload("test")
        await host.close()
        return record

    record = asyncio.run(cycle())
    assert record["in_process"] and record["worker_pid"] is None
    assert record["rss_before_bytes"] > 0 and record["rss_after_bytes"] > 0


def test_requests_past_max_connections_get_a_json_503_with_retry_after(micro_bundle, logs):
    """Two clients stuck sending their bodies hold both slots of --max-connections 2: the next
    request gets edgeclip's JSON 503 naming the flag (uvicorn's own was a bare text/plain one),
    and once they hang up the server answers again."""
    import time

    head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n")  # fmt: skip
    with ServeProcess(micro_bundle, "--max-connections", "2", log_dir=logs) as s:
        slow: list = []
        for _ in range(100):  # until both slow clients hold a slot (bounded: 100 x 0.05 s)
            # One that came in while a probe held a slot was refused (it has an answer to
            # read): replace it, or the probe would never find both slots taken.
            slow = [sock for sock in slow if not select.select([sock], [], [], 0)[0]]
            slow += [raw_request(s.port, head, [b'{"input": "a c']) for _ in range(2 - len(slow))]
            time.sleep(0.05)
            r = s.client.post("/v1/embeddings", json={"input": "a dog"})
            if r.status_code == 503:
                break
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        error = r.json()["error"]
        assert error["code"] == "too_many_requests_in_flight" and "--max-connections" in error["message"]
        for sock in slow:
            sock.close()
        for _ in range(100):
            r = s.client.post("/v1/embeddings", json={"input": "a dog"})
            if r.status_code == 200:
                break
            time.sleep(0.05)
        assert r.status_code == 200
