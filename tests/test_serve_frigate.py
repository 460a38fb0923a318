"""``edgeclip serve`` as Frigate's ``vllm`` semantic-search provider calls it: vLLM's chat-style
embeddings input (``messages``) on ``/v1/embeddings``, one image or one text a request, with
``dimensions: 768``, sent through the official ``openai`` client's ``post`` as Frigate does.
A real server in a subprocess on 127.0.0.1.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest

pytest.importorskip("uvicorn", reason="the serve extra is needed: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the dev extra brings the openai client")
from openai.types import CreateEmbeddingResponse  # noqa: E402
from test_serve_helpers import data_uri, jpeg_bytes, png_bytes  # noqa: E402

GOOD = [png_bytes((30, 160, 40)), jpeg_bytes(7)]
FRIGATE_WIDTH = 768  # Frigate's sqlite-vec column


@pytest.fixture(scope="module")
def client(micro_server):
    return openai.OpenAI(base_url=micro_server.url + "/v1", api_key="EMPTY", max_retries=0)


def _frigate_messages(text: str | None = None, image: bytes | None = None) -> list[dict]:
    """The conversation Frigate's provider builds for one input."""
    content = []
    if image is not None:
        b64 = base64.b64encode(image).decode()
        content.append({"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64}"}})
    content.append({"type": "text", "text": text or ""})
    return [
        {"role": "system", "content": [{"type": "text", "text": "Represent the user's input."}]},
        {"role": "user", "content": content},
        {"role": "assistant", "content": [{"type": "text", "text": ""}]},
    ]


def _frigate_embed(client, messages: list[dict]) -> np.ndarray:
    response = client.post("/embeddings", cast_to=CreateEmbeddingResponse, body={
        "model": "micro", "messages": messages, "encoding_format": "float",
        "dimensions": FRIGATE_WIDTH, "continue_final_message": True, "add_special_tokens": False,
    })  # fmt: skip
    assert len(response.data) == 1
    return np.asarray(response.data[0].embedding, dtype=np.float32)


def _padded(vector: np.ndarray) -> np.ndarray:
    return np.pad(vector, (0, FRIGATE_WIDTH - vector.shape[0]))


def test_frigate_image_and_text_equal_the_library_zero_padded_to_768(client, micro_model):
    for image in GOOD:
        got = _frigate_embed(client, _frigate_messages(image=image))
        assert got.shape == (FRIGATE_WIDTH,)
        assert np.abs(got - _padded(micro_model.encode_image([image])[0])).max() <= 1e-6
    got = _frigate_embed(client, _frigate_messages(text="a person walking a dog"))
    assert np.abs(got - _padded(micro_model.encode_text(["a person walking a dog"])[0])).max() <= 1e-6
    # padding changes no similarity: text-to-image cosine as in process
    image = _frigate_embed(client, _frigate_messages(image=GOOD[0]))
    want = float(micro_model.encode_text(["a person walking a dog"])[0] @ micro_model.encode_image(GOOD[:1])[0])
    assert abs(float(got @ image) - want) <= 1e-6


def test_plain_string_content_and_joined_text_parts(micro_server, micro_model):
    r = micro_server.client.post("/v1/embeddings", json={"messages": [
        {"role": "user", "content": [{"type": "text", "text": "a red"}, {"type": "text", "text": "car"}]},
    ]})  # fmt: skip
    assert r.status_code == 200, r.text
    got = np.array(r.json()["data"][0]["embedding"])
    assert np.abs(got - micro_model.encode_text(["a red car"])[0]).max() <= 1e-6
    plain = micro_server.client.post("/v1/embeddings", json={"messages": [{"role": "user", "content": "a red car"}]})
    assert np.abs(np.array(plain.json()["data"][0]["embedding"]) - got).max() <= 1e-6


def test_dimensions_pad_truncate_and_refuse(micro_server, micro_model):
    want = micro_model.encode_text(["a cat"])[0]
    full = want.shape[0]
    for dims, check in ((full + 5, lambda v: np.allclose(v, np.pad(want, (0, 5)), atol=1e-6)),
                        (4096, lambda v: v.shape == (4096,) and np.allclose(v[:full], want, atol=1e-6))):  # fmt: skip
        r = micro_server.client.post("/v1/embeddings", json={"input": "a cat", "dimensions": dims})
        assert r.status_code == 200, r.text
        assert check(np.array(r.json()["data"][0]["embedding"]))
    r = micro_server.client.post("/v1/embeddings", json={"input": "a cat", "dimensions": 4097})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
    assert "4096" in r.json()["error"]["message"]


BAD_MESSAGES = [
    ("an image and text", [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri(GOOD[0])}},
        {"type": "text", "text": "Represent the given image."}]}],
     400, "an image and text", "messages[0].content[1].text"),
    ("two images", [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri(GOOD[0])}},
        {"type": "image_url", "image_url": {"url": data_uri(GOOD[1])}}]}],
     400, "2 images", "messages[0].content[1].image_url.url"),
    ("nothing but blanks", [{"role": "user", "content": [{"type": "text", "text": "  "}]}],
     400, "no image and no text", "messages"),
    ("only a system prompt", [{"role": "system", "content": "Represent the user's input."}],
     400, "no image and no text", "messages"),
    ("text in an assistant turn", [{"role": "user", "content": "a cat"},
                                   {"role": "assistant", "content": "a dog"}],
     400, "put it in a 'user' message", "messages[1]"),
    ("an audio part", [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
     422, "must be a text part", "messages[0].content[0]"),
    ("not a list", "a cat", 422, "non-empty list", "messages"),
    ("a broken image", [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri(b"not an image")}}]}],
     400, "not an image file", "messages[0].content[0].image_url.url"),
    ("a URL", [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.jpg"}}]}],
     400, "never fetches URLs", "messages[0].content[0].image_url.url"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_MESSAGES, ids=[c[0] for c in BAD_MESSAGES])
def test_bad_messages_are_refused_naming_the_part(micro_server, case):
    _, messages, status, fragment, param = case
    r = micro_server.client.post("/v1/embeddings", json={"model": "micro", "messages": messages})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert fragment in error["message"], error
    assert error["param"] == param, error


def test_input_and_messages_together_are_refused(micro_server):
    r = micro_server.client.post("/v1/embeddings", json={"input": "a cat", "messages": [
        {"role": "user", "content": "a dog"}]})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_frigate_clip_as_service_client_spells_exec_endpoint_its_way(micro_server, micro_model):
    """Frigate's ``clip_as_service`` provider posts ``exec_endpoint`` and reads ``embedding``."""
    texts = micro_server.client.post("/post", json={"data": [{"text": "a car"}, {"text": "a person"}],
                                              "exec_endpoint": "/"})  # fmt: skip
    assert texts.status_code == 200, texts.text
    got = np.array([d["embedding"] for d in texts.json()["data"]])
    np.testing.assert_allclose(got, micro_model.encode_text(["a car", "a person"], invariant=True), atol=1e-5)
    blobs = [{"blob": base64.b64encode(g).decode()} for g in GOOD]
    images = micro_server.client.post("/post", json={"data": blobs, "exec_endpoint": "/"})
    got = np.array([d["embedding"] for d in images.json()["data"]])
    np.testing.assert_allclose(got, micro_model.encode_image(GOOD, invariant=True), atol=1e-5)
    # the snake-case spelling is honoured, not ignored: /rank ranks
    ranked = micro_server.client.post("/post", json={"exec_endpoint": "/rank", "data": [
        {"blob": blobs[0]["blob"], "matches": [{"text": "a car"}, {"text": "a person"}]}]})  # fmt: skip
    assert "clip_score" in ranked.json()["data"][0]["matches"][0]["scores"]
    clash = micro_server.client.post("/post", json={"data": [{"text": "a"}], "exec_endpoint": "/rank",
                                              "execEndpoint": "/"})  # fmt: skip
    assert clash.status_code == 400 and "disagree" in clash.json()["error"]["message"]
