"""The ``/photos`` page in headless Chromium when the server is not what it expects: started
without ``--index``, stopped and started again under the open page; and used with the keyboard
alone (Tab, Enter, Escape), as a screen-reader or keyboard user does.

Real servers (``edgeclip serve`` on 127.0.0.1, the micro bundle), a real index, real Chromium.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import test_serve_helpers
from serve_pages import indexed_shapes
from test_serve_helpers import Chromium, ServeProcess

STATE = "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
STATUS = "document.getElementById('status').textContent"


@pytest.fixture(scope="module")
def library(tmp_path_factory, micro_bundle) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("page-recovery")
    return SimpleNamespace(db=indexed_shapes(tmp, micro_bundle, 4, seed=2), tmp=tmp)


def _open(browser: Chromium, url: str) -> None:
    browser.open(url)
    browser.wait_until("document.getElementById('model').textContent !== 'connecting...'")


def _search(browser: Chromium, q: str) -> str:
    browser.evaluate("document.body.dataset.state = 'idle'")
    browser.evaluate(f"document.getElementById('q').value = {json.dumps(q)}")
    browser.evaluate("document.getElementById('search').requestSubmit()")
    return browser.wait_until(STATE)


def _key(browser: Chromium, key: str, code: int) -> None:
    extra = {"text": "\r"} if key == "Enter" else {}  # Enter's keypress is what activates
    for kind in ("keyDown", "keyUp"):
        browser.send("Input.dispatchKeyEvent", type=kind, key=key, code=key,
                     windowsVirtualKeyCode=code, **(extra if kind == "keyDown" else {}))  # fmt: skip


def _active(browser: Chromium) -> str:
    return browser.evaluate("(e => e.id || e.className || e.tagName)(document.activeElement)")


def test_without_an_index_the_page_says_so_before_any_search(micro_server, browser):
    # Before: "Type what you are looking for." and a working form, until the first search.
    _open(browser, micro_server.url + "/photos")
    browser.wait_until("document.body.dataset.state === 'error'")
    status = browser.evaluate(STATUS)
    assert "no photo index" in status and "--index photos.db" in status, status
    assert browser.evaluate("document.getElementById('run').disabled")
    assert browser.evaluate("document.getElementById('pick').disabled")


def test_a_server_that_stops_and_comes_back_under_the_page(library, micro_bundle, browser,
                                                          monkeypatch):  # fmt: skip
    args = ("--index", str(library.db), "--idle-ttl", "0")
    first = ServeProcess(micro_bundle, *args, log_dir=library.tmp)
    try:
        _open(browser, first.url + "/photos")
        assert _search(browser, "a red circle") == "done"
    finally:
        first.stop()
    # Before: "Failed to fetch", which says neither what failed nor what to do.
    assert _search(browser, "a blue square") == "error"
    status = browser.evaluate(STATUS)
    assert status.startswith(f"No answer from the server at 127.0.0.1:{first.port}"), status
    assert "restarting or offline" in status and "Try again" in status
    # the same port again (ServeProcess picks a free one; this one is free again)
    monkeypatch.setattr(test_serve_helpers, "free_port", lambda: first.port)
    with ServeProcess(micro_bundle, *args, log_dir=library.tmp) as again:
        assert _search(browser, "a blue square") == "done", browser.evaluate(STATUS)
        want = again.client.get("/v1/search", params={"q": "a blue square", "k": 24}).json()
    shown = browser.evaluate("[...document.querySelectorAll('#results .photo')].map("
                             "(f) => f.dataset.path)")  # fmt: skip
    assert shown == [d["path"] for d in want["data"]]


def test_the_page_works_from_the_keyboard_alone(library, micro_bundle, browser):
    with ServeProcess(micro_bundle, "--index", str(library.db), "--idle-ttl", "0",
                      log_dir=library.tmp) as server:  # fmt: skip
        _open(browser, server.url + "/photos")
        browser.evaluate("document.getElementById('q').focus()")
        browser.send("Input.insertText", text="a green triangle")
        _key(browser, "Enter", 13)
        assert browser.wait_until(STATE) == "done", browser.evaluate(STATUS)
        order = []
        for _ in range(6):
            _key(browser, "Tab", 9)
            order.append(_active(browser))
        # Before: the photos were not in the Tab order (only their "similar" buttons), so the
        # larger view could not be opened without a mouse, nor closed.
        assert order == ["k", "run", "pick", "under", "photo", "like"], order
        _key(browser, "Tab", 9)
        _key(browser, "Enter", 13)  # on the second photo
        browser.wait_until("document.getElementById('viewer').classList.contains('open')")
        assert _active(browser) == "viewer"
        browser.wait_until("document.getElementById('big').naturalWidth > 0")
        _key(browser, "Escape", 27)
        assert not browser.evaluate("document.getElementById('viewer').classList.contains('open')")
        second = browser.evaluate("document.querySelectorAll('#results .photo')[1].dataset.path")
        assert browser.evaluate("document.activeElement.dataset.path") == second
        _key(browser, "Tab", 9)  # its "similar" button, from the keyboard
        _key(browser, "Enter", 13)
        browser.wait_until(f"{STATUS}.includes(' like ') && document.body.dataset.state === 'done'")
        assert browser.evaluate("document.querySelector('#results .photo').dataset.path") == second
