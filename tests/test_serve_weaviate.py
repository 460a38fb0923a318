"""``edgeclip serve`` as Weaviate's ``multi2vec-clip`` module calls it (edgeclip/serve/weaviate.py):
readiness, ``/meta`` and ``/vectorize`` with bare base64 images, over real HTTP to a real server
on 127.0.0.1, without an API key (Weaviate sends none). Vectors are compared with the library's
own on the same bundle; a bad input is named in a string ``error`` and costs no good vector."""

from __future__ import annotations

import base64

import numpy as np
import pytest

pytest.importorskip("uvicorn", reason="the serve extra is needed: pip install -e '.[serve]'")

from test_serve_helpers import jpeg_bytes, png_bytes  # noqa: E402

GOOD = [png_bytes((200, 30, 30)), jpeg_bytes(5)]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _close(got, want) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), want, atol=1e-5)


def test_live_and_ready_answer_204_without_a_key(micro_server):
    for path in ("/.well-known/live", "/.well-known/ready"):
        r = micro_server.client.get(path)
        assert r.status_code == 204 and r.content == b"", path


def test_meta_describes_the_model(micro_server, micro_model):
    r = micro_server.client.get("/meta")
    assert r.status_code == 200
    info = r.json()["model"]
    assert info["embed_dim"] == micro_model.embed_dim and info["variant"] == micro_model.variant.id


def test_vectorize_returns_the_librarys_vectors_in_order(micro_server, micro_model):
    texts = ["a red square", "a photo of a dog"]
    r = micro_server.client.post("/vectorize", json={"texts": texts, "images": [_b64(b) for b in GOOD]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"textVectors", "imageVectors"}
    _close(body["textVectors"], micro_model.encode_text(texts, invariant=True))
    _close(body["imageVectors"], micro_model.encode_image(GOOD, invariant=True))
    only_text = micro_server.client.post("/vectorize", json={"texts": texts[:1]}).json()
    assert only_text["imageVectors"] == [] and len(only_text["textVectors"]) == 1
    # a data URI, as other clients send images, is taken too
    uri = micro_server.client.post("/vectorize", json={"images": ["data:image/png;base64," + _b64(GOOD[0])]})
    _close(uri.json()["imageVectors"], micro_model.encode_image(GOOD[:1], invariant=True))


def test_a_bad_image_is_named_and_the_good_vectors_are_kept(micro_server, micro_model):
    images = [_b64(GOOD[0]), _b64(b"this is not an image at all"), "@@not base64@@", _b64(GOOD[1])]
    r = micro_server.client.post("/vectorize", json={"texts": ["a cat"], "images": images})
    assert r.status_code == 400
    body = r.json()
    assert isinstance(body["error"], str)  # Weaviate decodes the error as a string
    assert "images[1]" in body["error"] and "images[2]" in body["error"]
    assert [f["param"] for f in body["failed"]] == ["images[1]", "images[2]"]
    assert body["imageVectors"][1] is None and body["imageVectors"][2] is None
    want = micro_model.encode_image(GOOD, invariant=True)
    _close(body["imageVectors"][0], want[0])
    _close(body["imageVectors"][3], want[1])
    _close(body["textVectors"], micro_model.encode_text(["a cat"], invariant=True))


def test_blank_inputs_fail_alone_and_the_others_are_kept(micro_server, micro_model):
    r = micro_server.client.post("/vectorize", json={"texts": ["a cat", "  ", "a dog"],
                                               "images": ["", _b64(GOOD[0])]})  # fmt: skip
    assert r.status_code == 400
    body = r.json()
    assert [f["param"] for f in body["failed"]] == ["texts[1]", "images[0]"]
    assert body["param"] == "texts[1]" and "empty" in body["error"]
    assert body["textVectors"][1] is None and body["imageVectors"][0] is None
    texts = micro_model.encode_text(["a cat", "a dog"], invariant=True)
    _close(body["textVectors"][0], texts[0])
    _close(body["textVectors"][2], texts[1])
    _close(body["imageVectors"][1], micro_model.encode_image(GOOD[:1], invariant=True)[0])


@pytest.mark.parametrize("payload, param", [
    ({"texts": "a cat", "images": 7}, "images"),
    ({"texts": [3]}, "texts[0]"),
    ({"texts": ["   "]}, "texts[0]"),
])  # fmt: skip
def test_malformed_fields_are_a_string_error_naming_the_field(micro_server, payload, param):
    r = micro_server.client.post("/vectorize", json=payload)
    assert r.status_code in (400, 422)
    body = r.json()
    assert isinstance(body["error"], str) and param in body["error"] and body["param"] == param


def test_a_body_that_is_not_json_is_named(micro_server):
    r = micro_server.client.post("/vectorize", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
