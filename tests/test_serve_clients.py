"""``edgeclip serve`` as its clients use it: Immich's form, the official ``openai`` client, and a
browser page on another origin (CORS). A real server in a subprocess on 127.0.0.1, real clients.

The server requires an API key, so every request here sends it; Immich itself sends none (it is
run without a key, docs/serve.md), which changes nothing about how ``/predict`` reads a form.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading

import httpx
import numpy as np
import pytest

pytest.importorskip("uvicorn", reason="the serve extra is needed: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the dev extra brings the openai client")

from test_serve_helpers import (  # noqa: E402
    Chromium,
    ServeProcess,
    data_uri,
    jpeg_bytes,
    png_bytes,
    png_header,
)

KEY = "test-key-for-clients"
AUTH = {"Authorization": f"Bearer {KEY}"}
VISUAL = json.dumps({"clip": {"visual": {"modelName": "ViT-B-32__openai", "options": {}}}})
TEXTUAL = json.dumps({"clip": {"textual": {"modelName": "ViT-B-32__openai", "options": {"language": "en"}}}})  # fmt: skip
GOOD = [png_bytes((200, 30, 30)), jpeg_bytes(3)]


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # an empty page: its origin is all the browser test needs
        body = b"<!doctype html><title>another origin</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def page_port():
    """A second web server: pages from it are cross-origin to edgeclip serve."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def server(micro_bundle, page_port, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    key_file = logs / "key"
    key_file.write_text(KEY)
    with ServeProcess(
        micro_bundle, "--api-key-file", str(key_file), "--idle-ttl", "0",
        "--alias", "ViT-B-32__openai", "--cors-origin", f"http://127.0.0.1:{page_port}/",
        log_dir=logs,
    ) as s:  # fmt: skip
        s.client.headers.update(AUTH)
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def _predict(server, **files) -> httpx.Response:
    return server.client.post("/predict", files=files)


def _blob(data: bytes) -> tuple[str, bytes, str]:
    # Immich's server appends `new Blob([bytes])`: Node names the part "blob", no type
    return ("blob", data, "application/octet-stream")


# -- Immich ---------------------------------------------------------------------------------------


def test_immich_image_errors_name_the_field_immich_sent(server, micro_model):
    r = _predict(server, entries=(None, VISUAL), image=_blob(GOOD[1]))
    assert r.status_code == 200, r.text
    got = np.array(json.loads(r.json()["clip"]))
    assert np.abs(got - micro_model.encode_image([GOOD[1]])[0]).max() <= 1e-6
    for data, status, fragment in [(b"not an image", 400, "not an image file"),
                                   (png_header(30000, 30000), 413, "--max-pixels")]:  # fmt: skip
        r = _predict(server, entries=(None, VISUAL), image=_blob(data))
        error = r.json()["error"]
        assert r.status_code == status, r.text
        assert error["param"] == "image" and error["message"].startswith("image "), (
            error
        )  # not image[0]
        assert fragment in error["message"]
    r = _predict(server, entries=(None, TEXTUAL), text=(None, "x" * 20_000))
    assert r.status_code == 413 and r.json()["error"]["param"] == "text"


@pytest.mark.parametrize("text", ["", "   \n", "\x00\ufeff", "&nbsp;"])
def test_immich_empty_text_is_a_400_naming_text(server, text):
    # "&nbsp;" passes every character check but the tokenizer unescapes it to whitespace: it is
    # refused from its token count, the same rule the model applies
    r = _predict(server, entries=(None, TEXTUAL), text=(None, text))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("text", "empty_input")
    assert "send a non-empty text" in error["message"]


MISSHAPEN_FORMS = [
    ("two images", [("entries", (None, VISUAL)), ("image", _blob(GOOD[0])), ("image", _blob(GOOD[1]))], 422, "2 'image' parts", "image"),
    ("image and text", [("entries", (None, TEXTUAL)), ("image", _blob(GOOD[0])), ("text", (None, "a cat"))], 422, "both an 'image' and a 'text'", "image"),
    ("image not a file", [("entries", (None, VISUAL)), ("image", (None, GOOD[0]))], 422, "no filename", "image"),
    ("text as a file", [("entries", (None, TEXTUAL)), ("text", ("q.txt", b"a cat", "text/plain"))], 422, "is a file, not a plain field", "text"),
    ("entries as a file", [("entries", ("e.json", VISUAL.encode(), "application/json")), ("image", _blob(GOOD[0]))], 422, "send it as a plain field", "entries"),
    ("5,000-digit number in entries", [("entries", (None, '{"clip": {"textual": {"modelName": ' + "9" * 5000 + "}}}")), ("text", (None, "a"))], 422, "cannot be read", "entries"),
]  # fmt: skip


@pytest.mark.parametrize("case", MISSHAPEN_FORMS, ids=[c[0] for c in MISSHAPEN_FORMS])
def test_immich_misshapen_forms_are_refused_not_guessed(server, case):
    _, files, status, fragment, param = case
    r = server.client.post("/predict", files=files)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"] and r.json()["error"]["param"] == param


def test_immich_multipart_without_boundary(server):
    r = server.client.post(
        "/predict", content=b"x", headers={"content-type": "multipart/form-data"}
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "invalid_form" and "Missing boundary" in error["message"]
    assert "'entries' field" in error["message"]  # says what to send


def test_immich_form_cut_off_in_transit_says_so(server):
    # Before: the cut-off 'image' part was dropped silently and the answer was "Either image or
    # text must be provided", sending the user to look for a bug in Immich's request.
    boundary = "edgeclipTestBoundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"entries\"\r\n\r\n{VISUAL}"
            f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            'filename="blob"\r\nContent-Type: image/png\r\n\r\n').encode()  # fmt: skip
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    cut = server.client.post("/predict", content=head + GOOD[0][:60], headers=headers)
    assert cut.status_code == 400 and cut.json()["error"]["code"] == "truncated_form"
    assert f"--{boundary}--" in cut.json()["error"]["message"]
    whole = head + GOOD[0] + f"\r\n--{boundary}--\r\n".encode()
    assert server.client.post("/predict", content=whole, headers=headers).status_code == 200


# -- the OpenAI client -----------------------------------------------------------------------------


def test_openai_client_empty_text_fails_naming_it_and_keeps_the_others(client, micro_model):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="micro", input="  ")
    assert caught.value.body["param"] == "input" and caught.value.body["code"] == "empty_input"
    # the client asks for base64 by default, so the kept vectors come back in base64 too
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="micro", input=["a cat", "&nbsp;", "a dog"])
    body = caught.value.body
    assert body["param"] == "input[1]"
    assert [(f["index"], f["param"]) for f in body["failed"]] == [(1, "input[1]")]
    assert [d["index"] for d in body["data"]] == [0, 2]
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in body["data"]])
    assert np.abs(got - micro_model.encode_text(["a cat", "a dog"])).max() <= 1e-6
    # a plain blank string fails alone too: before, it cost the whole request its vectors
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="micro", input=["a cat", "   ", "a dog", ""],
                                 encoding_format="float")  # fmt: skip
    body = caught.value.body
    assert "2 of 4 texts failed" in body["message"], body["message"]
    assert [(f["index"], f["code"]) for f in body["failed"]] == [(1, "empty_input"), (3, "empty_input")]
    assert [d["index"] for d in body["data"]] == [0, 2]
    got = np.array([d["embedding"] for d in body["data"]])
    assert np.abs(got - micro_model.encode_text(["a cat", "a dog"])).max() <= 1e-6


def test_a_blank_image_in_a_batch_fails_alone(client, micro_model):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="micro", input=[data_uri(GOOD[0]), " ", data_uri(GOOD[1])],
                                 encoding_format="float", extra_body={"modality": "image"})  # fmt: skip
    body = caught.value.body
    assert body["param"] == "input[1]" and "1 of 3 images failed" in body["message"]
    assert [(f["index"], f["code"]) for f in body["failed"]] == [(1, "empty_input")]
    assert [d["index"] for d in body["data"]] == [0, 2]
    got = np.array([d["embedding"] for d in body["data"]])
    assert np.abs(got - micro_model.encode_image(GOOD[:2])).max() <= 1e-6


def test_a_bad_image_in_a_batch_names_each_failure_and_keeps_the_good_vectors(client, micro_model):
    inputs = [data_uri(GOOD[0]), data_uri(b"GIF89a-broken"), data_uri(GOOD[1]),
              "http://127.0.0.1:9/cat.jpg"]  # fmt: skip
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="micro", input=inputs, encoding_format="float",
                                 dimensions=16, extra_body={"modality": "image"})  # fmt: skip
    body = caught.value.body
    assert "2 of 4 images failed" in body["message"]
    assert (
        "input[1] could not be read" in body["message"] and "input[3] is a URL" in body["message"]
    )
    assert [(f["index"], f["code"]) for f in body["failed"]] == [
        (1, "invalid_image"),
        (3, "url_not_allowed"),
    ]
    assert [d["index"] for d in body["data"]] == [0, 2]
    want = micro_model.encode_image(GOOD)[:, :16]
    want /= np.linalg.norm(want, axis=1, keepdims=True)  # as `dimensions` asked
    assert np.abs(np.array([d["embedding"] for d in body["data"]]) - want).max() <= 1e-6


def test_an_image_sent_without_modality_is_not_embedded_as_words(client):
    # the OpenAI client has no modality argument: forgetting extra_body sends images as text
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="micro", input=["a cat", data_uri(GOOD[0])])
    assert caught.value.body["param"] == "input[1]" and caught.value.body["code"] == "image_as_text"
    assert "extra_body" in caught.value.body["message"]


def test_base64_as_common_encoders_write_it(server, micro_model):
    raw = GOOD[1] * 1  # a JPEG: long enough to wrap, and its base64 has '+' and '/'
    b64 = base64.b64encode(raw).decode()
    assert "+" in b64 or "/" in b64
    forms = {
        "wrapped at 76 (base64 CLI)": base64.encodebytes(raw).decode(),
        "no padding": b64.rstrip("="),
        "URL-safe alphabet": base64.urlsafe_b64encode(raw).decode(),
    }
    for name, payload in forms.items():
        r = server.client.post("/v1/embeddings", json={
            "modality": "image", "input": "data:image/jpeg;base64," + payload})  # fmt: skip
        assert r.status_code == 200, (name, r.text)
        got = np.array(r.json()["data"][0]["embedding"])
        assert np.abs(got - micro_model.encode_image([raw])[0]).max() <= 1e-6, name
    mixed = b64.replace("+", "-", 1) if "+" in b64 else b64.replace("/", "_", 1) + "+"
    r = server.client.post("/v1/embeddings", json={
        "modality": "image", "input": "data:image/jpeg;base64," + mixed})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    assert "mixes the standard and the URL-safe alphabets" in r.json()["error"]["message"]


def test_a_5000_digit_number_is_malformed_json_not_a_crash(server):
    body = b'{"input": "a cat", "dimensions": ' + b"9" * 5000 + b"}"
    r = server.client.post(
        "/v1/embeddings", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert (
        r.json()["error"]["code"] == "invalid_json"
        and "4,300 digits" in r.json()["error"]["message"]
    )
    assert server.client.post("/v1/embeddings", json={"input": "a cat"}).status_code == 200


def test_classify_label_with_no_text_names_it(server):
    r = server.client.post("/v1/classify", json={
        "images": [data_uri(GOOD[0])], "labels": ["a cat", "&nbsp;"]})  # fmt: skip
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "labels[1]" and "no text once cleaned" in r.text


# -- OPTIONS and CORS -----------------------------------------------------------------------------


def test_options_and_preflight(server, page_port):
    plain = httpx.options(server.url + "/v1/embeddings")  # no key: OPTIONS reveals only methods
    assert plain.status_code == 204 and plain.headers["allow"] == "OPTIONS, POST"
    assert httpx.options(server.url + "/v1/nothing").status_code == 404
    wrong = server.client.get("/v1/embeddings")
    assert wrong.status_code == 405 and wrong.json()["error"]["message"].endswith("use POST.")
    origin = f"http://127.0.0.1:{page_port}"
    ask = {"Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"}  # fmt: skip
    ok = httpx.options(server.url + "/v1/embeddings", headers={"Origin": origin, **ask})
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == origin and ok.headers["vary"] == "Origin"
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert ok.headers["access-control-allow-headers"] == ask["Access-Control-Request-Headers"]
    other = f"http://localhost:{page_port}"
    refused = httpx.options(server.url + "/v1/embeddings", headers={"Origin": other, **ask})
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    assert f"--cors-origin {other}" in refused.json()["error"]["message"]
    # an allowed page can read the 401 it gets without the key, so it can tell its user why
    r = httpx.post(server.url + "/v1/embeddings", json={"input": "a"}, headers={"Origin": origin})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == origin
    r = httpx.post(
        server.url + "/v1/embeddings", json={"input": "a"}, headers={"Origin": other, **AUTH}
    )
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


_FETCH = """(async () => {
  try {
    const r = await fetch(%s + "/v1/embeddings", {method: "POST", body: JSON.stringify({input: "a cat"}),
      headers: {"Content-Type": "application/json", "Authorization": "Bearer %s"}});
    return JSON.stringify({status: r.status, data: (await r.json()).data});
  } catch (e) { return JSON.stringify({blocked: e.name}); }
})()"""


def test_a_browser_page_on_an_allowed_origin_calls_the_api(server, page_port, micro_model, tmp_path):
    browser = Chromium(tmp_path / "profile")
    try:
        results = {}
        for host in ("127.0.0.1", "localhost"):  # allowed, and the same page from another origin
            browser.open(f"http://{host}:{page_port}/")
            browser.wait_until("document.readyState === 'complete' && location.host !== ''")
            reply = browser.send("Runtime.evaluate", expression=_FETCH % (json.dumps(server.url), KEY),
                                 awaitPromise=True, returnByValue=True)  # fmt: skip
            results[host] = json.loads(reply["result"]["value"])
    finally:
        browser.close()
    allowed = results["127.0.0.1"]
    assert allowed["status"] == 200, allowed
    got = np.array(allowed["data"][0]["embedding"])
    assert np.abs(got - micro_model.encode_text(["a cat"])[0]).max() <= 1e-6
    assert results["localhost"] == {"blocked": "TypeError"}  # the browser refused it: CORS


def test_cors_origins_are_written_as_browsers_send_them(tmp_path):
    from edgeclip.serve.cli import build_config, build_parser
    from edgeclip.serve.cors import parse_origins

    assert parse_origins(["http://LocalHost:3000/", "https://a.example:443", "http://[::1]:80",
                          "*", "http://localhost:3000"]) == (
        "http://localhost:3000", "https://a.example", "http://[::1]", "*")  # fmt: skip
    for bad in ["localhost:3000", "http://a.example/app", "ftp://a.example", "http://a:b@c",
                "http://a.example:99999", "http://"]:  # fmt: skip
        with pytest.raises(ValueError, match="is not an origin"):
            parse_origins([bad])
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(
        '{"format": "edgeclip-bundle", "name": "t", "variants": []}'
    )
    assert (
        build_config(build_parser().parse_args([str(bundle)])).cors_origins == ()
    )  # off by default
    with pytest.raises(SystemExit, match="--cors-origin 'example.com' is not an origin"):
        build_config(build_parser().parse_args([str(bundle), "--cors-origin", "example.com"]))


def test_server_survived_and_logged_no_traceback(server):
    assert server.proc.poll() is None
    assert server.client.post("/v1/embeddings", json={"input": "still here"}).status_code == 200
    assert "Traceback" not in server.log(), server.log()
