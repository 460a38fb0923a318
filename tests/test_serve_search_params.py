"""``/v1/search`` and ``/v1/photos/{id}`` with odd parameters, odd paths and several clients.

A real ``edgeclip serve --index`` on 127.0.0.1 over a real index (built here with the micro
bundle) of photos in folders whose names hold spaces, accents and an emoji; one photo is
deleted after indexing. Answers are compared with ``Index.search`` in this process.
"""

from __future__ import annotations

import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from PIL import Image
from test_serve_helpers import ServeProcess

from edgeclip.index import Index

FOLDERS = ("a b", "ünï 😀")  # a space; accents and an emoji (4-byte UTF-8)


@pytest.fixture(scope="module")
def library(tmp_path_factory, micro_bundle):
    from converters.calibration import synthetic_pairs

    tmp = tmp_path_factory.mktemp("search-params")
    paths = []
    for i, im in enumerate(synthetic_pairs(8, 64, 3)[0]):
        folder = tmp / "tree" / FOLDERS[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(folder / f"photo {i} é.jpg")
        im.resize((96, 72)).save(paths[-1], "JPEG")
    db = tmp / "photos.db"
    with Index(db, str(micro_bundle)) as ix:
        assert not ix.update([tmp / "tree"]).failures
    paths[5].unlink()  # indexed, then deleted: its row still says ok
    paths[6].unlink()
    os.mkfifo(paths[6])  # indexed, then replaced by a FIFO, which blocks whoever opens it
    return SimpleNamespace(root=tmp / "tree", db=db, paths=paths, tmp=tmp)


@pytest.fixture(scope="module")
def reference(library, micro_bundle):
    with Index(library.db, str(micro_bundle), readonly=True) as ix:
        yield ix


@pytest.fixture(scope="module")
def server(library, micro_bundle):
    with ServeProcess(micro_bundle, "--index", str(library.db), "--idle-ttl", "0",
                      log_dir=library.tmp) as s:  # fmt: skip
        yield s


def _error(r: httpx.Response, status: int, param: str, code: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == (param, code), err
    assert "Traceback" not in r.text
    return err["message"]


def _paths(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [d["path"] for d in r.json()["data"]]


# -- parameters /v1/search does not take ----------------------------------------------------------


@pytest.mark.parametrize("name, value, hint", [
    ("top_k", "2", "the number of results is k"),
    ("limit", "2", "the number of results is k"),
    ("offset", "4", "no paging"),
    ("page", "2", "no paging"),
    ("query", "a red circle", "the words go in q"),
    ("qq", "x", "it takes q, like, k"),
])  # fmt: skip
def test_get_refuses_a_parameter_it_would_ignore(server, name, value, hint):
    # Before: top_k=2 answered 8 results and offset=4 the first page again, without a word.
    r = server.client.get("/v1/search", params={"q": "a red circle", name: value})
    message = _error(r, 400, name, "unknown_parameter")
    assert repr(name) in message and hint in message, message


@pytest.mark.parametrize("name, value, hint", [
    ("top_k", 2, "the number of results is k"),
    ("offset", 4, "no paging"),
    ("q", "a red circle", "the words go in query"),
])  # fmt: skip
def test_post_refuses_a_field_it_would_ignore(server, name, value, hint):
    r = server.client.post("/v1/search", json={"query": "a red circle", name: value})
    message = _error(r, 400, name, "unknown_parameter")
    assert hint in message, message


def test_the_known_parameters_still_work_together(server, reference, library):
    under = str(library.root / FOLDERS[1])
    params = {"q": "a red circle", "k": "3", "add": "blue", "subtract": "green", "under": under,
              "model": "micro"}  # fmt: skip
    got = _paths(server.client.get("/v1/search", params=params))
    want = reference.search("a red circle", k=3, add=["blue"], subtract=["green"], under=under)
    assert got == [h.path for h in want]


# -- k ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", ["0", "-1", "1.5", "abc", "", "1001", "99999999999999999999", "1e3"])
def test_odd_k_in_the_query_string_is_400_naming_k(server, k):
    message = _error(server.client.get("/v1/search", params={"q": "red", "k": k}), 400, "k",
                     "invalid_value")  # fmt: skip
    assert "1 to 1000" in message, message


@pytest.mark.parametrize("k", [1.5, True, "5", 2.0, [3]])
def test_k_that_is_not_a_json_integer_is_422_naming_k(server, k):
    _error(server.client.post("/v1/search", json={"query": "red", "k": k}), 422, "k",
           "invalid_type")  # fmt: skip


def test_k_of_one_gives_the_best_and_k_past_the_index_gives_every_photo(server, reference):
    best = reference.search("a red circle", k=1000)
    assert _paths(server.client.get("/v1/search", params={"q": "a red circle", "k": "1"})) == [
        best[0].path
    ]
    every = _paths(server.client.post("/v1/search", json={"query": "a red circle", "k": 1000}))
    assert every == [h.path for h in best] and len(every) == 8


# -- paths with spaces and unicode; a deleted photo; no path traversal -----------------------------


def test_unicode_folders_are_searched_and_served_as_they_are_on_disk(server, library, reference):
    for folder in FOLDERS:
        under = str(library.root / folder)
        got = server.client.get("/v1/search", params={"q": "a photo of a shape", "under": under,
                                                      "k": 20})  # fmt: skip
        want = reference.search("a photo of a shape", k=20, under=under)
        assert _paths(got) == [h.path for h in want] and len(want) == 4
        for hit in got.json()["data"]:
            if hit["path"] in (str(library.paths[5]), str(library.paths[6])):
                continue  # deleted or a FIFO: see the next tests
            r = server.client.get(hit["photo"], params={"size": 64})
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", r.text
            assert Image.open(Path(hit["path"])).size == (96, 72)


def test_a_deleted_photo_still_indexed_is_404_naming_it_and_the_fix(server, library):
    gone = str(library.paths[5])
    hits = server.client.get("/v1/search", params={"q": "a shape", "k": 20}).json()["data"]
    photo = next(h["photo"] for h in hits if h["path"] == gone)
    message = _error(server.client.get(photo), 404, "id", "photo_missing")
    assert gone in message and "--prune" in message, message


def test_a_photo_replaced_by_a_fifo_is_refused_not_waited_for(server, library):
    fifo = str(library.paths[6])
    hits = server.client.get("/v1/search", params={"q": "a shape", "k": 20}).json()["data"]
    photo = next(h["photo"] for h in hits if h["path"] == fifo)
    # Before: the thumbnail thread blocked in open() for good, and the request never ended.
    r = server.client.get(photo, timeout=30)
    message = _error(r, 404, "id", "photo_missing")
    assert fifo in message and "no longer a regular file" in message, message
    ok = next(h["photo"] for h in hits if h["path"] == str(library.paths[0]))
    assert server.client.get(ok, timeout=30).status_code == 200


@pytest.mark.parametrize("raw", ["..%2F..%2Fetc%2Fpasswd", "%2e%2e", "-1", "0x1", "%D9%A1",
                                 "1%00", "1.0", "%20 1"])  # fmt: skip
def test_ids_that_are_not_row_ids_never_read_a_file(server, raw):
    r = server.client.get(f"/v1/photos/{raw}")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json", r.text
    assert "root:" not in r.text


def test_only_indexed_rows_are_served_by_id(server, library):
    with sqlite3.connect(f"file:{library.db}?mode=ro", uri=True) as con:
        top = con.execute("SELECT MAX(id) FROM files").fetchone()[0]
    message = _error(server.client.get(f"/v1/photos/{top + 1}"), 404, "id", "photo_not_found")
    assert "/v1/search" in message


# -- several clients at once (loopback, bounded) -----------------------------------------------------


def test_six_clients_at_once_each_get_their_own_answers(server, reference, library):
    gone = (str(library.paths[5]), str(library.paths[6]))
    queries = ["a red circle", "a blue square", "a green triangle", "a yellow star",
               "a photo", "a dark picture"]  # fmt: skip
    want = {q: [h.path for h in reference.search(q, k=5)] for q in queries}

    def client(q: str) -> list[list[str]]:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            answers = []
            for _ in range(3):  # a text query, a "like" and thumbnails, as the page does
                data = c.get("/v1/search", params={"q": q, "k": 5}).json()["data"]
                answers.append([d["path"] for d in data])
                like = data[0]["photo"].rsplit("/", 1)[1]
                assert c.get("/v1/search", params={"like": like, "k": 1}).json()["data"][0][
                    "path"] == data[0]["path"]  # fmt: skip
                shown = c.get(data[0]["photo"], params={"size": 32}).status_code
                assert shown == (404 if data[0]["path"] in gone else 200)
            return answers

    with ThreadPoolExecutor(6) as pool:
        results = dict(zip(queries, pool.map(client, queries, timeout=120)))
    for q, answers in results.items():
        assert answers == [want[q]] * 3, q
