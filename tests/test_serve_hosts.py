"""A loopback-bound ``edgeclip serve`` answers only requests that name it by a loopback name,
so a web page that points its own domain at 127.0.0.1 (DNS rebinding) cannot read it."""

from __future__ import annotations

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is needed: pip install -e '.[serve]'")

from test_serve_helpers import ServeProcess, raw_request, read_response  # noqa: E402


@pytest.fixture(scope="module")
def server(micro_bundle, tmp_path_factory):
    logs = tmp_path_factory.mktemp("serve-hosts")
    with ServeProcess(micro_bundle, "--allow-host", "photos.lan", log_dir=logs) as s:
        yield s


def _models(server, host: str):
    return server.client.get("/v1/models", headers={"Host": host})


def test_a_rebound_name_is_refused_naming_the_fix(server):
    r = _models(server, f"evil.example:{server.port}")
    assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
    assert "--allow-host evil.example" in r.json()["error"]["message"]
    r = server.client.post("/v1/embeddings", json={"input": ["a cat"]},
                           headers={"Host": "evil.example"})  # fmt: skip
    assert r.status_code == 403


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST",
                                  "[::1]:{port}", "127.9.9.9", "app.localhost:{port}",
                                  "photos.lan:{port}", "Photos.LAN."])  # fmt: skip
def test_loopback_names_and_allowed_hosts_are_answered(server, host):
    assert _models(server, host.format(port=server.port)).status_code == 200


def test_a_request_without_host_is_answered(server):
    sock = raw_request(server.port, b"GET /v1/models HTTP/1.0\r\n\r\n", [])
    status, body = read_response(sock)
    assert status == 200 and b"object" in body
