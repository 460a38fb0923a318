"""The web pages (``/`` and ``/photos``) in headless Chromium, on what goes wrong: a file that is
no image, one too large, several dropped at once, a second request before the first answers,
no index, a server that stops and comes back, and keyboard-only use.

Real servers (``edgeclip serve`` on 127.0.0.1, the micro bundle), a real index, real Chromium
over the DevTools protocol. A request is held back deterministically by stopping the model
worker (SIGSTOP), never by timing.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import test_serve_helpers
from PIL import Image
from serve_pages import indexed_shapes
from test_serve_helpers import Chromium, ServeProcess, StoppedWorker

MAX_BODY = 200_000  # small, so a "too large" photo is a few hundred kB, not tens of MB
STATE = "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
STATUS = "document.getElementById('status').textContent"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("page-files")
    (d / "notes.txt").write_text("hello, not an image\n")
    (d / "fake.jpg").write_text("not a JPEG either\n")  # an image's name, text inside
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(noise).save(d / "big.png")  # ~360 kB: over MAX_BODY once base64-encoded
    for name, color in (("red.png", (230, 20, 20)), ("blue.png", (20, 20, 230))):
        Image.new("RGB", (60, 40), color).save(d / name)
    return SimpleNamespace(dir=d, **{p.stem.replace(".", "_"): p for p in d.iterdir()})


@pytest.fixture(scope="module")
def library(tmp_path_factory, micro_bundle) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("page-index")
    indexed_shapes(tmp, micro_bundle, 6, seed=1)
    (tmp / "tree" / "shape 5.png").unlink()  # indexed, then deleted: its row still says ok
    return SimpleNamespace(db=tmp / "photos.db", tmp=tmp, gone=tmp / "tree" / "shape 5.png")


@pytest.fixture(scope="module")
def server(library, micro_bundle):
    with ServeProcess(micro_bundle, "--index", str(library.db), "--idle-ttl", "0",
                      "--max-body-bytes", str(MAX_BODY), log_dir=library.tmp) as s:  # fmt: skip
        s.client.post("/v1/embeddings", json={"input": ["warm up"]})  # the worker runs from now
        yield s


def _open(browser: Chromium, url: str) -> None:
    browser.open(url)
    browser.send("Network.enable")  # for _settled
    browser.wait_until("document.getElementById('model').textContent !== 'connecting...'")


def _pick(browser: Chromium, selector: str, path: Path) -> None:
    browser.evaluate("document.body.dataset.state = 'idle'")
    browser.choose_file(selector, path)
    browser.evaluate(f"document.querySelector({json.dumps(selector)}).dispatchEvent(new Event('change'))")


def _search(browser: Chromium, q: str, k: int = 3) -> None:
    browser.evaluate("document.body.dataset.state = 'idle'")
    browser.evaluate(f"document.getElementById('q').value = {json.dumps(q)}")
    browser.evaluate(f"document.getElementById('k').value = '{k}'")
    browser.evaluate("document.getElementById('search').requestSubmit()")


def _key(browser: Chromium, key: str, code: int) -> None:
    extra = {"text": "\r"} if key == "Enter" else {}  # Enter's keypress is what submits/activates
    for kind in ("keyDown", "keyUp"):
        browser.send("Input.dispatchKeyEvent", type=kind, key=key, code=key,
                     windowsVirtualKeyCode=code, **(extra if kind == "keyDown" else {}))  # fmt: skip


def _settled(browser: Chromium, path: str) -> bool:
    """Every request the page made to ``path`` has ended (answered, failed or aborted), as the
    DevTools network log says; then one task hop, so the page's handlers of it have run."""
    browser.evaluate("0")  # collects the events that arrived meanwhile
    ev = browser.events
    sent = {e["params"]["requestId"] for e in ev if e.get("method") == "Network.requestWillBeSent"
            and path in e["params"]["request"]["url"]}  # fmt: skip
    ended = {e["params"]["requestId"] for e in ev
             if e.get("method") in ("Network.loadingFinished", "Network.loadingFailed")}  # fmt: skip
    if not sent or not sent <= ended:
        return False
    browser.send("Runtime.evaluate", expression="new Promise((r) => setTimeout(r, 0))",
                 awaitPromise=True)  # fmt: skip
    return True


def _active(browser: Chromium) -> str:
    return browser.evaluate("(e => e.id || e.className || e.tagName)(document.activeElement)")


# -- uploads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("page, selector", [("/", "#file"), ("/photos", "#pick")])
def test_an_upload_that_cannot_work_is_refused_naming_the_file(server, files, browser, page,
                                                               selector):  # fmt: skip
    _open(browser, server.url + page)
    shown = {}
    for name in ("notes.txt", "fake.jpg", "big.png", "red.png"):
        _pick(browser, selector, files.dir / name)
        shown[name] = (browser.wait_until(STATE), browser.evaluate(STATUS))
    # Before: "images[0] could not be read: ..." and "the request body is larger than this
    # server's limit", with no file named; now each message starts from the file.
    assert shown["notes.txt"][0] == "error" and "notes.txt is not an image (text/plain)" in \
        shown["notes.txt"][1] and "JPEG, PNG" in shown["notes.txt"][1]  # fmt: skip
    assert shown["fake.jpg"][0] == "error" and shown["fake.jpg"][1].startswith("fake.jpg: ")
    assert "could not be read" in shown["fake.jpg"][1]
    state, status = shown["big.png"]
    assert state == "error" and status.startswith("big.png is 0.") and "--max-body-bytes" in status
    assert shown["red.png"][0] == "done", shown["red.png"]
    assert "Traceback" not in json.dumps(shown)


def test_a_drop_of_several_files_says_which_one_was_ranked(server, files, browser):
    _open(browser, server.url + "/")
    names = ("red.png", "blue.png", "notes.txt")
    made = ", ".join(
        f"new File([Uint8Array.from(atob('{base64.b64encode((files.dir / n).read_bytes()).decode()}'),"
        f" (c) => c.charCodeAt(0))], '{n}', {{type: '{'text/plain' if n.endswith('txt') else 'image/png'}'}})"
        for n in names
    )
    # a drop as the browser delivers one: the files in the event's DataTransfer
    browser.evaluate(f"""(() => {{ const dt = new DataTransfer();
        for (const f of [{made}]) dt.items.add(f);
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {{dataTransfer: dt}})); }})()""")
    assert browser.wait_until(STATE) == "done"
    assert browser.evaluate(STATUS).startswith("red.png: ")
    assert "(the first of 3 files dropped; one image at a time)" in browser.evaluate(STATUS)
    browser.evaluate("""document.getElementById('drop').dispatchEvent(
        new DragEvent('drop', {dataTransfer: new DataTransfer()}))""")
    assert "not a file" in browser.evaluate(STATUS)


def test_the_large_view_of_a_deleted_photo_says_why_it_is_empty(server, library, browser):
    _open(browser, server.url + "/photos")
    _search(browser, "a shape", k=6)
    assert browser.wait_until(STATE) == "done"
    gone = json.dumps(str(library.gone))
    fig = f"[...document.querySelectorAll('#results .photo')].find((f) => f.dataset.path === {gone})"
    card = browser.wait_until(f"({fig}).dataset.error")
    browser.evaluate(f"({fig}).click()")
    # Before: the large view opened dark and empty, with no word of why.
    shown = browser.wait_until("document.getElementById('viewer').classList.contains('open') &&"
                               " document.getElementById('bigerr').textContent")  # fmt: skip
    assert shown == card and str(library.gone) in shown and "--prune" in shown, shown


@pytest.mark.parametrize("value", ["0", "-3", "2.5"])
def test_an_odd_count_is_refused_not_replaced(server, files, browser, value):
    # Before: Top k 0 ranked 5 labels, and Results 0 with "similar" searched for 24 photos.
    _open(browser, server.url + "/")
    browser.evaluate(f"document.getElementById('topk').value = '{value}'")
    _pick(browser, "#file", files.dir / "red.png")
    assert browser.wait_until(STATE) == "error"
    assert browser.evaluate(STATUS) == f'Top k is "{value}"; give a whole number, 1 or more ' \
        "(or leave it empty for 5)."  # fmt: skip
    _open(browser, server.url + "/photos")
    _search(browser, "a shape", k=3)
    assert browser.wait_until(STATE) == "done"
    browser.evaluate(f"document.getElementById('k').value = '{value}'")
    browser.evaluate("document.querySelector('#results .photo button.like').click()")
    assert browser.wait_until(STATE) == "error"
    assert browser.evaluate(STATUS).startswith(f'Results is "{value}"; give a whole number from 1')


# -- a second request before the first answers ------------------------------------------------------


def test_a_late_answer_never_replaces_a_newer_search(server, browser):
    _open(browser, server.url + "/photos")
    _search(browser, "a red circle")
    assert browser.wait_until(STATE) == "done"
    like = browser.evaluate("document.querySelector('#results .photo').dataset.path")
    with StoppedWorker(server):  # the text search waits for the model; "similar" needs none
        _search(browser, "a blue square")
        browser.wait_until("document.body.dataset.state === 'busy'")
        browser.evaluate("document.querySelector('#results .photo button.like').click()")
        browser.wait_until(f"{STATUS}.includes(' like ') && document.body.dataset.state === 'done'")
    # the blue-square answer now arrives; before, it replaced the results of "similar"
    server.wait_for("the held search to end", lambda: _settled(browser, "/v1/search"))
    assert " like " in browser.evaluate(STATUS), browser.evaluate(STATUS)
    assert browser.evaluate("document.querySelector('#results .photo').dataset.path") == like
    assert "like=" in browser.evaluate("location.search")


# every (status, ranking) the page shows, recorded as it changes: a stale answer that is shown
# only for a moment, between two others, is caught too
RECORD = """window.shown = [];
new MutationObserver(() => window.shown.push([document.getElementById('status').textContent,
  [...document.querySelectorAll('#results .row')].map((r) => [r.dataset.label, Number(r.dataset.cosine)])]))
  .observe(document.getElementById('status'), {childList: true, characterData: true, subtree: true});"""


def test_the_ranking_shown_is_the_image_named(server, files, browser):
    _open(browser, server.url + "/")
    browser.evaluate(RECORD)
    with StoppedWorker(server):  # both wait; the first one's answer must not show for the second
        _pick(browser, "#file", files.dir / "red.png")
        browser.wait_until("document.body.dataset.state === 'busy'")
        _pick(browser, "#file", files.dir / "blue.png")
    server.wait_for("the held requests to end", lambda: _settled(browser, "/v1/classify"))
    assert browser.wait_until(STATE) == "done"
    labels = ["a cat", "a dog", "a car", "a tree"]
    want = {n: _classify(server, files.dir / n, labels) for n in ("red.png", "blue.png")}
    ranked = [(status, rows) for status, rows in browser.evaluate("window.shown") if rows]
    assert ranked, browser.evaluate("window.shown")
    for status, rows in ranked:  # before: "blue.png: ..." over red.png's ranking, when red's came last
        name = status.split(":")[0]
        assert [r[0] for r in rows] == [w[0] for w in want[name]], (status, rows)
        assert np.allclose([r[1] for r in rows], [w[1] for w in want[name]], atol=1e-6)
    assert ranked[-1][0].startswith("blue.png: ")


def _classify(server: ServeProcess, image: Path, labels: list[str]) -> list[tuple[str, float]]:
    uri = test_serve_helpers.data_uri(image.read_bytes())
    r = server.client.post("/v1/classify", json={"images": [uri], "labels": labels, "top_k": 5})
    return [(x["label"], x["cosine"]) for x in r.json()["data"][0]["ranking"]]
