"""One bad input in a request never costs the good ones, on every endpoint: an over-long text or
a data URI sent as text fails alone, as a bad image does, and ``/v1/classify`` and
clip-as-service's ``/rank`` keep the good images' results in the error. Errors name the input
and the fix (Immich's boundary, token ids, template errors). A real server on 127.0.0.1, real
clients (httpx, the official ``openai`` client)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("uvicorn", reason="the serve extra is needed: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the dev extra brings the openai client")

from test_serve_helpers import data_uri, jpeg_bytes, png_bytes  # noqa: E402

GOOD = [png_bytes((200, 30, 30)), jpeg_bytes(11)]
LONG = "x" * 20_000  # over the default --max-text-chars (16,384)
LABELS = ["a red square", "a blue circle", "a photo of a dog"]
VISUAL = json.dumps({"clip": {"visual": {"modelName": "micro", "options": {}}}})


@pytest.fixture(scope="module")
def client(micro_server):
    return openai.OpenAI(base_url=micro_server.url + "/v1", api_key="unused", max_retries=0)


def _embed(micro_server, inputs, **more):
    r = micro_server.client.post("/v1/embeddings", json={"input": inputs, **more})
    return r.status_code, r.json()


def _kept(error) -> tuple[list[int], np.ndarray]:
    return [d["index"] for d in error["data"]], np.array([d["embedding"] for d in error["data"]])


# -- texts on /v1/embeddings ---------------------------------------------------------------------


@pytest.mark.parametrize("lead", [" ", "\n\t ", "\ufeff", "\u200b "])
def test_a_data_uri_after_whitespace_is_refused_as_text_and_the_others_kept(client, micro_model, lead):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="micro", input=["a red circle", lead + data_uri(GOOD[0])],
                                 encoding_format="float")  # fmt: skip
    body = caught.value.body
    assert (body["param"], body["code"]) == ("input[1]", "image_as_text")
    assert 'extra_body={"modality": "image"}' in body["message"]
    assert [(f["index"], f["code"]) for f in body["failed"]] == [(1, "image_as_text")]
    index, got = _kept(body)
    assert index == [0] and np.abs(got - micro_model.encode_text(["a red circle"])).max() <= 1e-6


def test_an_overlong_text_fails_alone_with_413_and_the_others_are_kept(micro_server, micro_model):
    status, body = _embed(micro_server, ["a red circle", LONG, "a dog"])
    assert status == 413  # every failure is a size limit, as for images
    error = body["error"]
    assert (error["param"], error["code"]) == ("input[1]", "text_too_long")
    assert "1 of 3 texts failed" in error["message"] and "--max-text-chars" in error["message"]
    assert "error.data holds the embeddings of the other 2" in error["message"]
    assert [(f["index"], f["param"]) for f in error["failed"]] == [(1, "input[1]")]
    index, got = _kept(error)
    assert index == [0, 2] and np.abs(got - micro_model.encode_text(["a red circle", "a dog"])).max() <= 1e-6


def test_mixed_text_failures_are_each_named_with_a_400(micro_server, micro_model):
    # a real image sent as text is longer than the text limit: it is named as an image, since
    # "send its start" would be the wrong fix for it
    image_as_words = data_uri(png_bytes((1, 2, 3), (400, 400)) * 20)
    assert len(image_as_words) > len(LONG)
    status, body = _embed(micro_server, [LONG, "a cat", image_as_words, "   "])
    assert status == 400
    error = body["error"]
    assert [(f["index"], f["code"]) for f in error["failed"]] == [
        (0, "text_too_long"), (2, "image_as_text"), (3, "empty_input")]  # fmt: skip
    assert error["param"] == "input[0]" and error["code"] == "invalid_text"
    index, got = _kept(error)
    assert index == [1] and np.abs(got - micro_model.encode_text(["a cat"])).max() <= 1e-6


def test_one_overlong_text_alone_is_its_own_413(micro_server):
    status, body = _embed(micro_server, LONG)
    assert status == 413
    error = body["error"]
    assert (error["param"], error["code"]) == ("input", "text_too_long")
    assert error["message"].startswith("input has 20,000 characters") and error["data"] == []


def test_jina_text_objects_fail_alone(micro_server, micro_model):
    status, body = _embed(micro_server, [{"text": "a dog"}, {"text": LONG}, {"image": data_uri(GOOD[0])}])
    assert status == 400
    error = body["error"]
    assert error["param"] == "input[1].text" and "input[1].text has 20,000" in error["message"]
    assert [(f["index"], f["code"]) for f in error["failed"]] == [(1, "text_too_long")]
    assert [d["index"] for d in error["data"]] == [0, 2]
    np.testing.assert_allclose(error["data"][0]["embedding"], micro_model.encode_text("a dog")[0], atol=1e-5)
    np.testing.assert_allclose(error["data"][1]["embedding"],
                               micro_model.encode_image(GOOD[:1], invariant=True)[0], atol=1e-5)  # fmt: skip


def test_clip_as_service_and_weaviate_texts_fail_alone(micro_server, micro_model):
    r = micro_server.client.post("/post", json={"data": [{"text": "a dog"}, {"text": LONG}]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert [f["param"] for f in error["failed"]] == ["data[1].text"]
    assert "embedding" not in error["data"][1]
    np.testing.assert_allclose(error["data"][0]["embedding"], micro_model.encode_text("a dog")[0], atol=1e-5)
    r = micro_server.client.post("/vectorize", json={"texts": ["a cat", LONG]})
    assert r.status_code == 400
    body = r.json()
    assert isinstance(body["error"], str) and "texts[1] has 20,000 characters" in body["error"]
    assert [f["param"] for f in body["failed"]] == ["texts[1]"] and body["textVectors"][1] is None
    np.testing.assert_allclose(body["textVectors"][0], micro_model.encode_text("a cat")[0], atol=1e-5)


# -- classify and /rank keep the good images' results --------------------------------------------


def test_classify_keeps_the_good_images_rankings(micro_server, micro_model):
    images = [data_uri(GOOD[0]), "data:image/png;base64,AAAA", data_uri(GOOD[1])]
    r = micro_server.client.post("/v1/classify", json={"images": images, "labels": LABELS, "top_k": 2})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "images[1]" and "1 of 3 images failed" in error["message"]
    assert "error.data holds the rankings of the other 2" in error["message"]
    assert [f["param"] for f in error["failed"]] == ["images[1]"]
    assert [d["index"] for d in error["data"]] == [0, 2]
    for item, image in zip(error["data"], GOOD):
        want = micro_model.classify(image, LABELS, top_k=2)
        assert [x["label"] for x in item["ranking"]] == [label for label, _ in want]
        np.testing.assert_allclose([x["probability"] for x in item["ranking"]],
                                   [p for _, p in want], atol=1e-5)  # fmt: skip


def test_rank_keeps_the_good_docs_scores(micro_server, micro_model):
    docs = [{"uri": data_uri(GOOD[0]), "id": "good", "matches": [{"text": t} for t in LABELS]},
            {"uri": "data:image/png;base64,AAAA", "id": "bad", "matches": [{"text": "a cat"}]}]  # fmt: skip
    r = micro_server.client.post("/post", json={"data": docs, "execEndpoint": "/rank"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert [f["param"] for f in error["failed"]] == ["data[1].uri"]
    good, bad = error["data"]
    assert good["id"] == "good" and bad == docs[1]  # the failed doc comes back as sent
    ranked = [(m["text"], m["scores"]["clip_score"]["value"]) for m in good["matches"]]
    want = micro_model.classify(GOOD[0], LABELS, top_k=len(LABELS))
    assert [t for t, _ in ranked] == [label for label, _ in want]
    np.testing.assert_allclose([p for _, p in ranked], [p for _, p in want], atol=1e-4)


# -- errors that name the input and the fix -------------------------------------------------------


def test_immich_boundary_that_does_not_match_the_header_is_named(micro_server):
    body = (b'--bodyBoundary\r\nContent-Disposition: form-data; name="entries"\r\n\r\n'
            + VISUAL.encode() + b"\r\n--bodyBoundary--\r\n")  # fmt: skip
    headers = {"content-type": "multipart/form-data; boundary=headerBoundary"}
    r = micro_server.client.post("/predict", content=body, headers=headers)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "boundary_mismatch" and "cut off" not in error["message"]
    assert "'bodyBoundary'" in error["message"] and "'headerBoundary'" in error["message"]
    r = micro_server.client.post("/predict", content=b"entries=x", headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "boundary_mismatch"
    assert "no line '--headerBoundary'" in r.json()["error"]["message"]


def test_nested_token_ids_get_the_token_ids_hint(client):
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.embeddings.create(model="micro", input=[[49406, 320, 49407]])
    assert caught.value.body["param"] == "input[0]"
    assert "token ids are not accepted; send the text" in caught.value.body["message"]


def test_classify_counts_in_words_and_names_templates_and_labels(micro_server):
    image = [data_uri(GOOD[0])]
    many = [f"a {{}} number {i}" for i in range(2_100)]
    r = micro_server.client.post("/v1/classify", json={"images": image, "labels": ["cat"], "templates": many})
    assert r.status_code == 413
    assert r.json()["error"]["message"].startswith("1 label x 2,100 templates = 2,100 prompts;")
    for templates in ["a {} {}", ["a {}", "a {} }"], "nonsense"]:
        r = micro_server.client.post("/v1/classify", json={"images": image, "labels": ["cat", "dog"],
                                                     "templates": templates})  # fmt: skip
        assert r.status_code == 400 and r.json()["error"]["param"] == "templates", r.text
    r = micro_server.client.post("/v1/classify", json={"images": image, "labels": ["cat", "cat"]})
    assert r.status_code == 400 and r.json()["error"]["param"] in ("labels", "labels[1]")
    assert "appears twice" in r.json()["error"]["message"]


def test_server_survived_and_logged_no_traceback(micro_server):
    assert micro_server.client.post("/v1/embeddings", json={"input": "a cat"}).status_code == 200
    assert "Traceback" not in micro_server.log()
