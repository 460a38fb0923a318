"""``edgeclip serve`` as clip-as-service clients call it: ``POST /post`` with ``execEndpoint``
``"/"`` (encode) and ``"/rank"`` (edgeclip/serve/jina.py), over real HTTP to a real server on
127.0.0.1. Embeddings equal the library's; ranks equal ``EdgeClip.classify``'s; a bad doc is
named as ``data[i].uri`` and the others' results are kept."""

from __future__ import annotations

import base64

import numpy as np
import pytest

pytest.importorskip("uvicorn", reason="the serve extra is needed: pip install -e '.[serve]'")

from test_serve_helpers import data_uri, jpeg_bytes, png_bytes  # noqa: E402

GOOD = [png_bytes((200, 30, 30)), jpeg_bytes(7)]
LABELS = ["a red square", "a blue circle", "a photo of a dog"]


def _post(micro_server, data, endpoint="/"):
    return micro_server.client.post("/post", json={"data": data, "execEndpoint": endpoint})


def test_encode_mixes_texts_and_images_in_order(micro_server, micro_model):
    docs = [{"text": "a dog", "id": "t0"}, {"uri": data_uri(GOOD[0])},
            {"blob": base64.b64encode(GOOD[1]).decode()}, {"text": "a cat"}]  # fmt: skip
    r = _post(micro_server, docs)
    assert r.status_code == 200, r.text
    out = r.json()["data"]
    assert out[0]["id"] == "t0" and out[0]["text"] == "a dog"  # the doc comes back, plus embedding
    texts = micro_model.encode_text(["a dog", "a cat"], invariant=True)
    images = micro_model.encode_image(GOOD, invariant=True)
    for got, want in zip([out[0], out[3], out[1], out[2]], [*texts, *images]):
        np.testing.assert_allclose(got["embedding"], want, atol=1e-5)


def test_rank_sorts_matches_as_classify_does(micro_server, micro_model):
    docs = [{"uri": data_uri(g), "matches": [{"text": t} for t in LABELS]} for g in GOOD]
    r = _post(micro_server, docs, "/rank")
    assert r.status_code == 200, r.text
    for doc, image in zip(r.json()["data"], GOOD):
        ranked = [(m["text"], m["scores"]["clip_score"]["value"]) for m in doc["matches"]]
        want = micro_model.classify(image, LABELS, top_k=len(LABELS))
        assert [t for t, _ in ranked] == [label for label, _ in want]
        np.testing.assert_allclose([p for _, p in ranked], [p for _, p in want], atol=1e-4)
        assert abs(sum(p for _, p in ranked) - 1) < 1e-6
        cosines = [m["scores"]["clip_score_cosine"]["value"] for m in doc["matches"]]
        assert cosines == sorted(cosines, reverse=True)


def test_a_text_ranked_against_images(micro_server, micro_model):
    r = _post(micro_server, [{"text": "a red square", "matches": [{"uri": data_uri(g)} for g in GOOD]}], "/rank")
    assert r.status_code == 200, r.text
    cos = [m["scores"]["clip_score_cosine"]["value"] for m in r.json()["data"][0]["matches"]]
    want = sorted(micro_model.encode_image(GOOD, invariant=True) @ micro_model.encode_text("a red square")[0], reverse=True)
    np.testing.assert_allclose(cos, want, atol=1e-5)


def test_a_bad_image_is_named_and_the_good_embeddings_are_kept(micro_server, micro_model):
    docs = [{"text": "a dog"}, {"uri": data_uri(b"not an image")}, {"uri": data_uri(GOOD[0])}]
    r = _post(micro_server, docs)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "data[1].uri" and "data[1].uri" in err["message"]
    assert [f["param"] for f in err["failed"]] == ["data[1].uri"]
    kept = err["data"]
    assert "embedding" not in kept[1]
    np.testing.assert_allclose(kept[2]["embedding"], micro_model.encode_image(GOOD[:1], invariant=True)[0], atol=1e-5)
    np.testing.assert_allclose(kept[0]["embedding"], micro_model.encode_text("a dog")[0], atol=1e-5)


@pytest.mark.parametrize("body, param", [
    ({"data": [{"uri": "https://example.com/cat.jpg"}]}, "data[0].uri"),  # never fetched
    ({"data": [{"text": "a", "uri": "data:image/png;base64,AAAA"}]}, "data[0]"),
    ({"data": [{"text": "   "}]}, "data[0].text"),
    ({"data": [{"text": 5}]}, "data[0].text"),
    ({"data": []}, "data"),
    ({"data": [{"text": "a"}], "execEndpoint": "/index"}, "execEndpoint"),
    ({"data": [{"uri": "data:image/png;base64,AAAA"}], "execEndpoint": "/rank"}, "data[0].matches"),
])  # fmt: skip
def test_bad_requests_name_the_field(micro_server, body, param):
    r = micro_server.client.post("/post", json=body)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["param"] == param and param in err["message"], err


def test_embeddings_take_jina_style_objects_of_both_modalities(micro_server, micro_model):
    inputs = [{"text": "a dog"}, {"image": base64.b64encode(GOOD[0]).decode()},
              {"image": data_uri(GOOD[1])}, {"text": "a cat"}]  # fmt: skip
    r = micro_server.client.post("/v1/embeddings", json={"input": inputs})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    want = [*micro_model.encode_text(["a dog"]), *micro_model.encode_image(GOOD, invariant=True),
            *micro_model.encode_text(["a cat"])]  # fmt: skip
    for d, w in zip(body["data"], want):
        np.testing.assert_allclose(d["embedding"], w, atol=1e-5)
    tokens = len(micro_model.tokenizer.encode("a dog")) + len(micro_model.tokenizer.encode("a cat")) + 4 + 2
    assert body["usage"]["prompt_tokens"] == tokens  # each text with its start and end, 1 an image


def test_jina_style_objects_name_the_bad_one_and_keep_the_others(micro_server, micro_model):
    inputs = [{"text": "a dog"}, {"image": data_uri(b"not an image")}, {"image": data_uri(GOOD[0])}]
    r = micro_server.client.post("/v1/embeddings", json={"input": inputs})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "input[1].image" and [f["param"] for f in err["failed"]] == ["input[1].image"]
    assert [d["index"] for d in err["data"]] == [0, 2]
    np.testing.assert_allclose(err["data"][1]["embedding"], micro_model.encode_image(GOOD[:1], invariant=True)[0], atol=1e-5)
    two = micro_server.client.post("/v1/embeddings", json={"input": [{"text": "a", "image": "b"}]})
    assert two.status_code == 422 and two.json()["error"]["param"] == "input[0]"
