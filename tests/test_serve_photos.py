"""Photo search over HTTP: ``edgeclip serve MODEL --index DB`` on a real index of real files.

A real server in a subprocess on 127.0.0.1 (the model in its worker), a real index built with
the micro bundle, real clients (httpx, headless Chromium). Every answer is compared with
``Index.search`` run in this process on the same index.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image
from test_serve_helpers import REPO, Chromium, ServeProcess, free_port

from edgeclip.index import Index

KEY = "test-key-for-photos"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUERIES = ["a photo of a red circle", "a photo of a blue square", "a green triangle"]
SIZE = (128, 96)  # 4:3, so thumbnails of any size divide evenly


def _shapes(n: int, seed: int = 0) -> list[Image.Image]:
    from converters.calibration import synthetic_pairs

    return synthetic_pairs(n, 64, seed)[0]


def _make_tree(root: Path) -> dict[str, Path]:
    """12 photos (JPEG and PNG, one portrait) in two folders, a broken file, and two photos
    that are indexed and then deleted / overwritten with garbage."""
    paths = {}
    for i, im in enumerate(_shapes(14)):
        folder = root / ("album/2024" if i % 2 else "album")
        folder.mkdir(parents=True, exist_ok=True)
        size = SIZE[::-1] if i == 3 else SIZE
        ext, fmt = ("jpg", "JPEG") if i % 3 else ("png", "PNG")
        name = {12: "gone", 13: "garbled"}.get(i, f"img{i:02d}")
        p = folder / f"{name}.{ext}"
        im.resize(size, Image.Resampling.BICUBIC).save(p, fmt)
        paths[name] = p
    (root / "album" / "broken.jpg").write_bytes(b"\xff\xd8\xff" + os.urandom(500))
    paths["broken"] = root / "album" / "broken.jpg"
    return paths


def _row_id(db: Path, path: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return con.execute("SELECT id FROM files WHERE path = ?", (str(path),)).fetchone()[0]


@pytest.fixture(scope="module")
def library(tmp_path_factory, micro_bundle):
    tmp = tmp_path_factory.mktemp("photos")
    paths = _make_tree(tmp / "tree")
    db = tmp / "photos.db"
    with Index(db, str(micro_bundle)) as ix:
        report = ix.update([tmp / "tree"])
    assert len(report.failures) == 1, report.failures  # broken.jpg
    paths["gone"].unlink()  # indexed, then deleted: the row still says ok
    paths["garbled"].write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))  # indexed, then damaged
    return SimpleNamespace(root=tmp / "tree", db=db, paths=paths, tmp=tmp)


@pytest.fixture(scope="module")
def reference(library, micro_bundle):
    with Index(library.db, str(micro_bundle), readonly=True) as ix:
        yield ix


@pytest.fixture(scope="module")
def server(library, micro_bundle):
    key_file = library.tmp / "key"
    key_file.write_text(KEY)
    with ServeProcess(micro_bundle, "--index", str(library.db), "--api-key-file", str(key_file),
                      "--idle-ttl", "0", log_dir=library.tmp) as s:  # fmt: skip
        s.client.headers.update(AUTH)
        yield s


def _same(got: list[dict], hits: list) -> None:
    assert [d["path"] for d in got] == [h.path for h in hits]
    for d, h in zip(got, hits):
        assert abs(d["score"] - h.score) <= 1e-5, (d, h)


def _error(r, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    if param is not None:
        assert err["param"] == param, err
    return err


# -- search ---------------------------------------------------------------------------------------


def test_search_equals_index_search_in_process(server, reference):
    for q in QUERIES:
        r = server.client.get("/v1/search", params={"q": q, "k": 8})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list" and body["model"] == "micro"
        assert len(body["data"]) == 8
        _same(body["data"], reference.search(q, k=8))
        assert all(d["photo"].startswith("/v1/photos/") for d in body["data"])


def test_post_search_with_add_and_subtract_equals_the_library(server, reference):
    body = {"query": "a photo of a red circle", "k": 5, "add": ["a blue shape"],
            "subtract": "a red shape"}  # fmt: skip
    r = server.client.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    want = reference.search(body["query"], k=5, add=body["add"], subtract=[body["subtract"]])
    _same(r.json()["data"], want)


def test_under_keeps_only_that_folder(server, reference, library):
    folder = library.root / "album" / "2024"
    r = server.client.get("/v1/search", params={"q": QUERIES[0], "k": 20, "under": str(folder)})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data and all(d["path"].startswith(f"{folder}/") for d in data)
    _same(data, reference.search(QUERIES[0], k=20, under=folder))
    r = server.client.post("/v1/search", json={"query": QUERIES[0], "under": str(folder)})
    _same(r.json()["data"], reference.search(QUERIES[0], k=20, under=folder))


def test_like_finds_photos_like_a_result_from_its_stored_vector(server, reference):
    """"More like this": the stored vector of a result is the query; the photo itself comes
    first, and the rest equal ``Index.search_vector`` on that vector (with an added text too)."""
    first = server.client.get("/v1/search", params={"q": QUERIES[0], "k": 1}).json()["data"][0]
    photo_id = int(first["photo"].rsplit("/", 1)[1])
    r = server.client.get("/v1/search", params={"like": photo_id, "k": 6})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data[0]["path"] == first["path"] and data[0]["score"] >= 0.9999
    slot = reference.store.con.execute("SELECT slot FROM files WHERE id = ?", (photo_id,)).fetchone()[0]
    stored = reference.vectors.matrix(reference.committed_slots())[slot].astype(np.float32)
    stored /= np.linalg.norm(stored)
    _same(data, reference.search_vector(stored, k=6))
    plus = reference.embed_query("a blue shape")
    both = stored + plus / np.linalg.norm(plus)
    r = server.client.post("/v1/search", json={"like": photo_id, "add": "a blue shape", "k": 6})
    _same(r.json()["data"], reference.search_vector(both / np.linalg.norm(both), k=6))
    _error(server.client.get("/v1/search", params={"like": "999999"}), 404, "like")
    _error(server.client.get("/v1/search", params={"like": "x1"}), 400, "like")
    _error(server.client.get("/v1/search", params={"like": photo_id, "q": "a cat"}), 400, "like")


def test_an_uploaded_image_finds_itself_and_its_neighbours(server, library, micro_bundle):
    """``{"image": data URI}``: the worker embeds the upload, decoded in full as
    ``/v1/embeddings`` decodes it, so the results are those of ``Index.search(Path(file))`` in
    process with draft decoding off (same paths, scores to 1e-5)."""
    import base64

    photo = library.paths["img01"]
    uri = f"data:image/jpeg;base64,{base64.b64encode(photo.read_bytes()).decode()}"
    r = server.client.post("/v1/search", json={"image": uri, "k": 6})
    assert r.status_code == 200, r.text
    with Index(library.db, str(micro_bundle), readonly=True, draft=False) as full_decode:
        want = full_decode.search(photo, k=6)
    data = r.json()["data"]
    assert data[0]["path"] == str(photo)
    _same(data, want)
    _error(server.client.post("/v1/search", json={"image": "data:image/png;base64,AAAA"}), 400, "image")
    _error(server.client.post("/v1/search", json={"image": uri, "query": "a cat"}), 400, "image")
    _error(server.client.post("/v1/search", json={"image": 3}), 422, "image")


def test_concurrent_searches_each_get_their_own_answer(server, reference):
    asks = [QUERIES[i % len(QUERIES)] for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda q: server.client.get("/v1/search", params={"q": q, "k": 6}), asks))
    for q, r in zip(asks, answers):
        assert r.status_code == 200, r.text
        _same(r.json()["data"], reference.search(q, k=6))


def test_bad_parameters_are_400_naming_them(server):
    c = server.client
    for k in ("0", "abc", "1001", "-3", "2.5"):
        _error(c.get("/v1/search", params={"q": "a cat", "k": k}), 400, "k")
    _error(c.post("/v1/search", json={"query": "a cat", "k": 0}), 400, "k")
    _error(c.post("/v1/search", json={"query": "a cat", "k": "3"}), 422, "k")
    _error(c.get("/v1/search", params={"q": "  "}), 400, "q")
    _error(c.get("/v1/search"), 400, "q")
    _error(c.post("/v1/search", json={"query": "\u200b "}), 400, "query")
    _error(c.post("/v1/search", json={"k": 3}), 422, "query")
    _error(c.post("/v1/search", json={"query": "a cat", "add": ["a dog", ""]}), 400, "add[1]")
    _error(c.get("/v1/search", params={"q": "a cat", "under": "relative/dir"}), 400, "under")
    err = _error(c.post("/v1/search", json={"query": "a cat", "subtract": "a cat"}), 400)
    assert "cancel out" in err["message"]
    _error(c.get("/v1/photos/1", params={"size": "16"}), 400, "size")
    _error(c.get("/v1/photos/1", params={"size": "4096"}), 400, "size")


def test_the_api_needs_the_key_and_the_page_does_not(server):
    with httpx.Client(base_url=server.url, timeout=60) as bare:
        assert bare.get("/v1/search", params={"q": "a cat"}).status_code == 401
        assert bare.get("/v1/photos/1").status_code == 401
        page = bare.get("/photos")
    assert page.status_code == 200 and "edgeclip photos" in page.text


def test_the_server_process_loads_no_model(server):
    """The query is embedded by the worker: the server's own memory maps hold no runtime."""
    server.client.get("/v1/search", params={"q": "a cat"})
    worker = server.worker_pid()
    assert "onnxruntime" in Path(f"/proc/{worker}/maps").read_text()
    assert "onnxruntime" not in Path(f"/proc/{server.proc.pid}/maps").read_text()


# -- thumbnails -----------------------------------------------------------------------------------


def _jpeg(r) -> Image.Image:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert "no-cache" in r.headers["cache-control"]
    im = Image.open(io.BytesIO(r.content))
    assert im.format == "JPEG"
    return im


def test_thumbnails_of_results_are_jpegs_of_the_size_asked(server, library):
    data = server.client.get("/v1/search", params={"q": QUERIES[1], "k": 20}).json()["data"]
    assert len(data) == 14  # every photo (broken.jpg never was one)
    gone, garbled = str(library.paths["gone"]), str(library.paths["garbled"])
    for hit in data:
        r = server.client.get(hit["photo"], params={"size": 64})
        if hit["path"] == gone:
            assert gone in _error(r, 404, "id")["message"]
            continue
        if hit["path"] == garbled:
            assert garbled in _error(r, 422, "id")["message"]
            continue
        im = _jpeg(r)
        portrait = hit["path"] == str(library.paths["img03"])
        assert im.size == ((48, 64) if portrait else (64, 48)), hit
        # never enlarged: the default 256 gives the photo's own size
        assert _jpeg(server.client.get(hit["photo"])).size == (SIZE[::-1] if portrait else SIZE)


def test_an_unchanged_thumbnail_is_revalidated_with_304(server, library):
    data = server.client.get("/v1/search", params={"q": QUERIES[0], "k": 20}).json()["data"]
    damaged = {str(library.paths["gone"]), str(library.paths["garbled"])}
    hit = next(d for d in data if d["path"] not in damaged)
    first = server.client.get(hit["photo"])
    again = server.client.get(hit["photo"], headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.headers["etag"] == first.headers["etag"]


def test_ids_not_in_the_index_are_404(server, library):
    broken = _row_id(library.db, library.paths["broken"])  # a row, but not an embedded photo
    for raw in ("999999", "abc", "-1", str(broken), "1e3", "%2e%2e"):
        err = _error(server.client.get(f"/v1/photos/{raw}"), 404, "id")
        assert err["code"] == "photo_not_found", err


# -- the page -------------------------------------------------------------------------------------


_SHOWN = """(() => {
  const figs = [...document.querySelectorAll('#results .photo')];
  const settled = (f) => f.dataset.error || (f.querySelector('img').complete && f.querySelector('img').naturalWidth > 0);
  return figs.length && figs.every(settled) && JSON.stringify(figs.map(
    (f) => [f.dataset.path, f.dataset.error ? null : f.querySelector('img').naturalWidth]));
})()"""


def test_the_page_searches_and_shows_the_thumbnails(server, library, tmp_path):
    browser = Chromium(tmp_path / "profile", window=(420, 860))  # a phone's width
    try:
        browser.open(server.url + "/photos")
        browser.wait_until("document.getElementById('model').textContent !== 'connecting...'")
        browser.wait_until("getComputedStyle(document.getElementById('keybox')).display !== 'none'")
        browser.evaluate(f"document.getElementById('key').value = {json.dumps(KEY)}")
        browser.evaluate(f"document.getElementById('q').value = {json.dumps(QUERIES[0])}")
        browser.evaluate("document.getElementById('k').value = '20'")
        browser.evaluate("document.getElementById('search').requestSubmit()")
        state = browser.wait_until(
            "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
        )
        assert state == "done", browser.evaluate("document.getElementById('status').textContent")
        shown = json.loads(browser.wait_until(_SHOWN))
        # "similar" on the first card: photos like it, itself first
        browser.evaluate("document.querySelector('#results .photo button.like').click()")
        browser.wait_until("document.getElementById('status').textContent.includes(' like ')"
                           " && document.body.dataset.state === 'done'")  # fmt: skip
        similar = json.loads(browser.wait_until(_SHOWN))
        # a photo picked from the device: the file input, as a phone's picker fills it
        root = browser.send("DOM.getDocument")["root"]["nodeId"]
        pick = browser.send("DOM.querySelector", nodeId=root, selector="#pick")["nodeId"]
        browser.send("DOM.setFileInputFiles", nodeId=pick, files=[str(library.paths["img01"])])
        browser.evaluate("document.getElementById('pick').dispatchEvent(new Event('change'))")
        browser.wait_until("document.getElementById('status').textContent.includes('like img01.jpg')"
                           " && document.body.dataset.state === 'done'")  # fmt: skip
        picked = json.loads(browser.wait_until(_SHOWN))
    finally:
        browser.close()
    assert picked[0][0] == str(library.paths["img01"])
    want = server.client.get("/v1/search", params={"q": QUERIES[0], "k": 20}).json()["data"]
    like = want[0]["photo"].rsplit("/", 1)[1]
    like_want = server.client.get("/v1/search", params={"like": like, "k": 20}).json()["data"]
    assert [p for p, _ in similar] == [d["path"] for d in like_want]
    assert similar[0][0] == want[0]["path"]
    assert [p for p, _ in shown] == [d["path"] for d in want]
    damaged = {str(library.paths["gone"]), str(library.paths["garbled"])}
    assert {p for p, width in shown if width is None} == damaged  # marked, with the reason
    assert all(width > 0 for p, width in shown if p not in damaged)


# -- other servers --------------------------------------------------------------------------------


def test_an_index_of_another_model_is_409_naming_both(library, micro_bundle, odd_bundle):
    db = library.tmp / "odd.db"
    with Index(db, str(odd_bundle)) as ix:
        ix.update([library.root / "album" / "2024"])
    with ServeProcess(micro_bundle, "--index", str(db), log_dir=library.tmp) as s:
        err = _error(s.client.get("/v1/search", params={"q": "a cat"}), 409)
        _error(s.client.post("/v1/search", json={"query": "a cat"}), 409)
    assert err["code"] == "model_mismatch"
    assert os.path.realpath(odd_bundle) in err["message"] and "micro" in err["message"]
    assert "--reindex" in err["message"] and "not comparable" in err["message"]
    assert err["index_model"]["fingerprint"] != err["served_model"]["fingerprint"]


def test_without_index_search_is_404_saying_how(library, micro_bundle):
    with ServeProcess(micro_bundle, log_dir=library.tmp) as s:
        for r in (s.client.get("/v1/search", params={"q": "a cat"}), s.client.get("/v1/photos/1")):
            err = _error(r, 404)
            assert err["code"] == "no_index" and "--index" in err["message"]
        assert s.client.get("/photos").status_code == 200


def _serve_exit(micro_bundle: Path, index: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edgeclip", "serve", str(micro_bundle), "--index", str(index),
           "--port", str(free_port())]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_an_index_that_is_missing_or_not_one_is_refused_before_binding(library, micro_bundle):
    notes = library.tmp / "notes.db"
    notes.write_text("not an index")
    other = library.tmp / "other.sqlite"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE t (x)")
    for path, says in ((library.tmp / "nope" / "photos.db", "no such file"),
                       (notes, "not an edgeclip index"), (other, "not an edgeclip index"),
                       (library.tmp, "is a folder")):  # fmt: skip
        proc = _serve_exit(micro_bundle, path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and says in lines[0], proc.stderr
        assert "edgeclip index" in lines[0] or "--index" in lines[0]


def test_an_index_of_folders_with_no_photos_yet_is_served_and_finds_nothing(library, micro_bundle):
    empty = library.tmp / "no-photos-yet"
    empty.mkdir()
    db = library.tmp / "empty.db"
    with Index(db, str(micro_bundle)) as ix:
        ix.update([empty])
    with ServeProcess(micro_bundle, "--index", str(db), log_dir=library.tmp) as s:
        r = s.client.get("/v1/search", params={"q": "a cat"})
        assert r.status_code == 200, r.text
        assert r.json()["data"] == []
