"""``edgeclip serve`` end to end: a real server in a subprocess on 127.0.0.1, real clients.

The micro fixture bundle stands in for a model (random weights, the real tokenizer and
preprocessing). Vectors are compared with ``edgeclip.load`` of the same bundle in this process.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("uvicorn", reason="the serve extra is needed: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the dev extra brings the openai client")

from test_serve_helpers import (  # noqa: E402
    PAGE_LABELS,
    ServeProcess,
    StoppedWorker,
    classify_on_page,
    data_uri,
    jpeg_bytes,
    png_bytes,
    png_header,
    raw_request,
    read_response,
)

BODY_LIMIT = 256 * 1024
BODY_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def allowed_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("allowed")
    (root / "red.png").write_bytes(png_bytes((220, 30, 30)))
    (root / "sub").mkdir()
    (root / "sub" / "blue.png").write_bytes(png_bytes((30, 30, 220)))
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    outside.write_bytes(png_bytes((1, 2, 3)))
    (root / "escape.png").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def server(micro_bundle, allowed_dir, tmp_path_factory):
    with ServeProcess(
        micro_bundle, "--allow-dir", str(allowed_dir), "--body-timeout", str(BODY_TIMEOUT_S),
        "--max-body-bytes", str(BODY_LIMIT), "--idle-ttl", "0", "--alias", "ViT-B-32__openai",
        log_dir=tmp_path_factory.mktemp("logs"),
    ) as s:  # fmt: skip
        yield s


@pytest.fixture(scope="module")
def model(micro_bundle):
    import edgeclip

    return edgeclip.load(str(micro_bundle))


def _half(data: bytes) -> bytes:
    """A JPEG cut in the middle of its pixel data: the header is intact, the scan is not."""
    return data[: len(data) // 2]


IMAGES = [png_bytes((220, 20, 20)), jpeg_bytes(1), png_bytes((20, 20, 220), (300, 100))]
LONG_TEXT = "word " * 2000  # 10,000 characters, far past 77 tokens


def test_openai_client_vectors_equal_in_process(server, model):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    texts = ["a photo of a cat", "a dog on a skateboard", LONG_TEXT]
    want = model.encode_text(texts)
    # left out, the client asks for base64 and decodes it itself
    for fmt in ({}, {"encoding_format": "float"}):
        got = client.embeddings.create(model="micro", input=texts, **fmt)
        assert np.abs(np.array([d.embedding for d in got.data]) - want).max() <= 1e-6
        assert [d.index for d in got.data] == [0, 1, 2]
    assert got.usage.prompt_tokens == got.usage.total_tokens > 77  # the long text counts 77

    got = client.embeddings.create(
        model="micro", input=[data_uri(b) for b in IMAGES], extra_body={"modality": "image"}
    )
    assert (
        np.abs(np.array([d.embedding for d in got.data]) - model.encode_image(IMAGES)).max() <= 1e-6
    )

    cut = client.embeddings.create(model="micro", input=texts[:1], dimensions=16)
    head = want[:1, :16] / np.linalg.norm(want[:1, :16], axis=1, keepdims=True)
    assert np.abs(np.array(cut.data[0].embedding) - head[0]).max() <= 1e-6


def test_base64_is_little_endian_float32(server, model):
    r = server.client.post("/v1/embeddings", json={"input": "a cat", "encoding_format": "base64"})
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    assert np.abs(np.frombuffer(raw, dtype="<f4") - model.encode_text(["a cat"])[0]).max() <= 1e-6


def _post_all(server, requests: list[dict]) -> list[tuple[int, dict]]:
    out = []
    for body in requests:
        r = server.client.post("/v1/embeddings", json=body)
        out.append((r.status_code, r.json()))
    return out


def test_sixteen_concurrent_clients_equal_sequential_in_one_batch(server):
    requests = [{"input": [data_uri(jpeg_bytes(i)), data_uri(png_bytes((i * 15, 90, 40)))],
                 "modality": "image"} for i in range(7)]  # fmt: skip
    # one client sends a truncated JPEG in the middle: only its request fails
    requests.append({"input": [data_uri(IMAGES[0]), data_uri(_half(jpeg_bytes(99))), data_uri(IMAGES[1])],
                     "modality": "image"})  # fmt: skip
    requests += [{"input": [f"text number {i}", f"another text {i * 7}"]} for i in range(8)]
    sequential = _post_all(server, requests)
    assert [s for s, _ in sequential] == [200] * 7 + [400] + [200] * 8

    results: list = [None] * len(requests)
    before = {m: server.metric("edgeclip_batch_size_count", modality=m) for m in ("image", "text")}
    with StoppedWorker(server):
        # Two requests occupy the model thread and both batchers; then 16 clients queue up.
        blockers = [threading.Thread(target=_post_all, args=(server, [b])) for b in
                    ({"input": "blocker"}, {"input": [data_uri(IMAGES[2])], "modality": "image"})]  # fmt: skip
        for t in blockers:
            t.start()
        for m in ("image", "text"):
            server.wait_for(f"the {m} blocker's batch", lambda m=m: server.metric(
                "edgeclip_batch_size_count", modality=m) == before[m] + 1)  # fmt: skip
        barrier = threading.Barrier(len(requests))

        def client(i: int) -> None:
            barrier.wait(timeout=30)
            results[i] = _post_all(server, [requests[i]])[0]

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        server.wait_for("all 16 requests queued", lambda: (
            server.metric("edgeclip_queue_depth", modality="image") == 17
            and server.metric("edgeclip_queue_depth", modality="text") == 16))  # fmt: skip
    for t in threads + blockers:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads + blockers)
    # each modality's 16 queued requests became exactly one more model call
    for m in ("image", "text"):
        assert server.metric("edgeclip_batch_size_count", modality=m) == before[m] + 2
    for (status, body), (want_status, want) in zip(results, sequential):
        assert status == want_status
        if status != 200:
            assert body["error"]["param"] == "input[1]" and "truncated" in body["error"]["message"]
            continue
        got = np.array([d["embedding"] for d in body["data"]])
        assert np.abs(got - np.array([d["embedding"] for d in want["data"]])).max() <= 1e-6


# -- bad input: every case gets its documented status and a message naming the problem --------

_TEXT = {"content-type": "text/plain"}
BAD_INPUTS = [
    ("malformed JSON", {"content": b'{"input": ["a cat"', "headers": {"content-type": "application/json"}}, 400, "malformed JSON", None),
    ("wrong content type", {"content": b"input=a+cat", "headers": _TEXT}, 415, "application/json", None),
    ("missing field", {"json": {"model": "micro"}}, 422, "'input' is missing", "input"),
    ("unknown model", {"json": {"model": "mikro", "input": "x"}}, 400, "Did you mean 'micro'", "model"),
    ("empty list", {"json": {"input": []}}, 400, "input is empty", "input"),
    ("empty string", {"json": {"input": ""}}, 400, "empty", "input"),
    ("10,000 texts", {"json": {"input": ["a cat"] * 10_000}}, 413, "10,000 texts", "input"),
    ("token ids", {"json": {"input": [[1, 2, 3]]}}, 422, "token ids are not accepted", "input[0]"),
    ("bad modality", {"json": {"input": "x", "modality": "audio"}}, 400, "modality='audio'", "modality"),
    ("bad encoding", {"json": {"input": "x", "encoding_format": "hex"}}, 400, "encoding_format", "encoding_format"),
    ("too many dimensions", {"json": {"input": "x", "dimensions": 4097}}, 400, "exceeds", "dimensions"),
    ("not an image", {"json": {"input": [data_uri(b"hello, world")], "modality": "image"}}, 400, "not an image file", "input[0]"),
    ("not base64", {"json": {"input": ["data:image/png;base64,@@@"], "modality": "image"}}, 400, "not valid base64", "input[0]"),
    ("truncated JPEG", {"json": {"input": [data_uri(IMAGES[0]), data_uri(_half(jpeg_bytes(5)))], "modality": "image"}}, 400, "truncated", "input[1]"),
    ("30000x30000 PNG", {"json": {"input": [data_uri(png_header(30000, 30000))], "modality": "image"}}, 413, "--max-pixels", "input[0]"),
    ("URL", {"json": {"input": ["http://127.0.0.1:9/cat.jpg"], "modality": "image"}}, 400, "never fetches URLs", "input[0]"),
    ("too many images", {"json": {"input": [data_uri(IMAGES[0])] * 33, "modality": "image"}}, 413, "33 images", "input"),
    ("text too long", {"json": {"input": ["x" * 20_000]}}, 413, "--max-text-chars", "input[0]"),
    ("classify without labels", {"path": "/v1/classify", "json": {"images": [data_uri(IMAGES[0])]}}, 422, "'labels' is missing", "labels"),
    ("duplicate labels", {"path": "/v1/classify", "json": {"images": [data_uri(IMAGES[0])], "labels": ["cat", "cat"]}}, 400, "appears twice", None),
    ("too many prompts", {"path": "/v1/classify", "json": {"images": [data_uri(IMAGES[0])], "labels": [f"l{i}" for i in range(30)], "templates": "imagenet80"}}, 413, "--max-prompts", "labels"),
    ("predict without entries", {"path": "/predict", "files": {"text": (None, "a cat")}}, 422, "Invalid request format", "entries"),
    ("predict face task", {"path": "/predict", "files": {"entries": (None, '{"facial-recognition": {"detection": {"modelName": "buffalo_l"}}}'), "image": ("a.png", IMAGES[0])}}, 422, "only the 'clip' task", "entries"),
    ("predict no input", {"path": "/predict", "files": {"entries": (None, '{"clip": {"textual": {"modelName": "micro"}}}'), "other": (None, "x")}}, 400, "Either image or text", None),
    ("predict as JSON", {"path": "/predict", "json": {"text": "a cat"}}, 415, "multipart/form-data", None),
    ("unknown route", {"path": "/v1/chat/completions", "json": {}}, 404, "no endpoint", None),
    ("JSON nested 100,000 deep", {"content": b"[" * 100_000 + b"]" * 100_000, "headers": {"content-type": "application/json"}}, 400, "nested too deeply", None),
    ("a folder under --allow-dir", {"json": {"input": ["sub"], "modality": "image"}}, 400, "not a regular file", "input[0]"),
    ("bare base64", {"json": {"input": [base64.b64encode(IMAGES[0] * 4).decode()], "modality": "image"}}, 400, "prefix it with 'data:image/jpeg;base64,'", "input[0]"),
    ("three bad images among good", {"json": {"input": [data_uri(IMAGES[0]), "data:image/png,no-base64", "data:image/png;base64,!!!", "http://a/b.jpg"], "modality": "image"}}, 400, "3 of 4 images failed", "input[1]"),
    ("template with two slots", {"path": "/v1/classify", "json": {"images": [data_uri(IMAGES[0])], "labels": ["cat", "dog"], "templates": "a {} {}"}}, 400, "exactly one '{}'", None),
    ("template with a lone brace", {"path": "/v1/classify", "json": {"images": [data_uri(IMAGES[0])], "labels": ["cat", "dog"], "templates": ["a {}", "a {} }"]}}, 400, "exactly one '{}'", None),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input(server, case):
    _, kwargs, status, fragment, param = case
    kwargs = dict(kwargs)
    path = kwargs.pop("path", "/v1/embeddings")
    r = server.client.post(path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    # OpenAI's four keys; a request whose inputs failed adds which (``failed``) and, for
    # /v1/embeddings, the other inputs' vectors (``data``)
    assert {"message", "type", "param", "code"} <= set(error) <= {
        "message", "type", "param", "code", "failed", "data"}  # fmt: skip
    assert fragment in error["message"], error
    if param is not None:
        assert error["param"] == param


def test_body_over_the_limit_is_refused_declared_or_chunked(server):
    big = {"input": ["x" * 1000] * 300}  # about 300 kB of JSON
    r = server.client.post("/v1/embeddings", json=big)
    assert r.status_code == 413 and "--max-body-bytes" in r.json()["error"]["message"]
    payload = json.dumps(big).encode()
    chunks = (payload[i : i + 16384] for i in range(0, len(payload), 16384))  # no Content-Length
    r = server.client.post(
        "/v1/embeddings", content=chunks, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


def test_slow_client_times_out_without_holding_the_model(server, model):
    head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n")  # fmt: skip
    slow = raw_request(server.port, head, [b'{"input": "a c'])
    # while that body never finishes, the model keeps serving others
    r = server.client.post("/v1/embeddings", json={"input": "a dog"})
    assert r.status_code == 200
    status, body = read_response(slow)
    assert status == 408
    assert f"within {BODY_TIMEOUT_S} s" in json.loads(body)["error"]["message"]


def test_refused_folders_leak_no_file_descriptors_and_data_scheme_ignores_case(server, model):
    fds = lambda: len(os.listdir(f"/proc/{server.proc.pid}/fd"))  # noqa: E731
    before = fds()
    for _ in range(5):
        assert server.client.post("/v1/embeddings", json={"modality": "image", "input": ["sub"]}).status_code == 400
    assert fds() == before  # each refused folder once kept its descriptor open
    upper = "DATA:" + data_uri(IMAGES[0])[len("data:"):]
    r = server.client.post("/v1/embeddings", json={"modality": "image", "input": [upper]})
    assert r.status_code == 200, r.text
    assert np.abs(np.array(r.json()["data"][0]["embedding"]) - model.encode_image([IMAGES[0]])[0]).max() <= 1e-6


def test_allow_dir_paths_and_traversal(server, model, allowed_dir):
    ok = server.client.post("/v1/embeddings", json={"modality": "image", "input": [
        str(allowed_dir / "red.png"), "sub/blue.png"]})  # fmt: skip
    assert ok.status_code == 200, ok.text
    want = model.encode_image([allowed_dir / "red.png", allowed_dir / "sub" / "blue.png"])
    assert np.abs(np.array([d["embedding"] for d in ok.json()["data"]]) - want).max() <= 1e-6
    attempts = ["../outside/secret.png", "sub/../../" + allowed_dir.name + "x/red.png", "/etc/passwd",
                str(allowed_dir / ".." / "red.png"), "escape.png", "red.png\x00.txt", "/proc/self/environ"]  # fmt: skip
    for attempt in attempts:
        r = server.client.post("/v1/embeddings", json={"modality": "image", "input": [attempt]})
        assert r.status_code == 400, (attempt, r.text)
        assert "outside the directories" in r.json()["error"]["message"]


def test_immich_predict_visual_and_textual(server, model):
    entries = json.dumps({"clip": {"visual": {"modelName": "ViT-B-32__openai", "options": {}}}})
    r = server.client.post(
        "/predict", files={"entries": (None, entries), "image": ("blob", IMAGES[2])}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["clip"], str)  # Immich stores the string as it is
    assert (body["imageWidth"], body["imageHeight"]) == (300, 100)
    assert (
        np.abs(np.array(json.loads(body["clip"])) - model.encode_image([IMAGES[2]])[0]).max()
        <= 1e-6
    )
    entries = json.dumps(
        {"clip": {"textual": {"modelName": "micro", "options": {"language": "en"}}}}
    )
    r = server.client.post("/predict", files={"entries": (None, entries), "text": (None, "a cat")})
    assert r.status_code == 200 and set(r.json()) == {"clip"}
    assert (
        np.abs(np.array(json.loads(r.json()["clip"])) - model.encode_text(["a cat"])[0]).max()
        <= 1e-6
    )
    assert server.client.get("/ping").text == "pong"
    wrong = json.dumps({"clip": {"textual": {"modelName": "ViT-L-14__openai"}}})
    r = server.client.post("/predict", files={"entries": (None, wrong), "text": (None, "a cat")})
    assert r.status_code == 400 and "--alias" in r.json()["error"]["message"]


def test_classify_ranks_like_the_library(server, model):
    labels = ["a red square", "a blue square", "a dog", "noise"]
    r = server.client.post("/v1/classify", json={
        "images": [data_uri(b) for b in IMAGES], "labels": labels, "templates": "photo", "top_k": 3})  # fmt: skip
    assert r.status_code == 200, r.text
    want = model.classify(IMAGES, labels, top_k=3, templates="photo")
    cosines = model.encode_image(IMAGES) @ model.label_embeddings(labels, "photo").T
    for item, expected, cos in zip(r.json()["data"], want, cosines):
        assert [x["label"] for x in item["ranking"]] == [label for label, _ in expected]
        for x, (_, p) in zip(item["ranking"], expected):
            assert abs(x["probability"] - p) <= 1e-5
            assert abs(x["cosine"] - cos[labels.index(x["label"])]) <= 1e-6


def test_openai_client_retrieves_models_and_never_sees_server_paths(server, micro_bundle):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    listed = [m.id for m in client.models.list().data]
    assert listed == ["micro", "ViT-B-32__openai"]  # the bundle's path is served, not shown
    assert client.models.retrieve("micro").id == "micro"
    with pytest.raises(openai.NotFoundError, match="Did you mean 'micro'"):
        client.models.retrieve("mikro")
    r = server.client.post("/v1/embeddings", json={"model": "mikro", "input": "x"})
    assert str(micro_bundle) not in r.json()["error"]["message"]
    by_path = client.embeddings.create(model=str(micro_bundle), input=["a cat"])
    assert len(by_path.data[0].embedding) == len(client.embeddings.create(model="micro", input=["a cat"]).data[0].embedding)


def test_models_health_metrics(server):
    ids = [m["id"] for m in server.client.get("/v1/models").json()["data"]]
    assert ids[0] == "micro" and "ViT-B-32__openai" in ids
    health = server.health()
    assert (
        health["status"] == "ok"
        and health["loaded"]
        and health["limits"]["max_body_bytes"] == BODY_LIMIT
    )
    text = server.client.get("/metrics").text
    for name in ("edgeclip_requests_total", "edgeclip_request_duration_seconds_bucket",
                 "edgeclip_batch_size_bucket", "edgeclip_queue_depth", "edgeclip_model_loaded",
                 "edgeclip_resident_memory_bytes"):  # fmt: skip
        assert f"\n{name}" in text, name
    assert server.metric("edgeclip_requests_total", endpoint="/v1/embeddings", status="413") >= 1
    assert server.metric("edgeclip_resident_memory_bytes", process="worker") > 0


def test_web_page_classifies_a_picked_image(server, tmp_path):
    image = tmp_path / "red.png"
    image.write_bytes(IMAGES[0])
    rows = classify_on_page(
        server.url, image, PAGE_LABELS, tmp_path / "profile", tmp_path / "page.png"
    )
    api = server.client.post("/v1/classify", json={
        "images": [data_uri(IMAGES[0])], "labels": PAGE_LABELS, "top_k": 5}).json()  # fmt: skip
    want = [(x["label"], x["probability"]) for x in api["data"][0]["ranking"]]
    assert [(label, p) for label, p, _, _ in rows] == want
    assert rows[0][3] == f"{100 * want[0][1]:.1f}%"  # the bar is as long as the probability
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_server_survived_everything(server):
    assert server.proc.poll() is None
    assert server.client.post("/v1/embeddings", json={"input": "still here"}).status_code == 200
    assert "Traceback" not in server.log(), server.log()
    assert os.path.exists(server.log_path)
