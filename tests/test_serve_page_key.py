"""The web pages (``/`` and ``/photos``) in headless Chromium against a server with an API key:
what each says for no key, a wrong key and a key a browser cannot send (a pasted curly quote).

A real ``edgeclip serve --api-key-file`` on 127.0.0.1 (the micro bundle, a real index), real
Chromium over the DevTools protocol.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from serve_pages import indexed_shapes
from test_serve_helpers import Chromium, ServeProcess

KEY = "page-key-1234"
STATE = "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
STATUS = "document.getElementById('status').textContent"
CASES = {  # the key typed -> what the status must say
    "": "needs its API key: type it in the API key box",
    "not-the-key": "The API key typed is not this server's",
    KEY + "\u201d": 'The API key holds "\u201d", which no key sent by a browser can hold',
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, micro_bundle):
    tmp = tmp_path_factory.mktemp("page-key")
    indexed_shapes(tmp, micro_bundle, 3, seed=4)
    (tmp / "key").write_text(KEY + "\n")
    Image.new("RGB", (60, 40), (200, 30, 30)).save(tmp / "red.png")
    with ServeProcess(micro_bundle, "--index", str(tmp / "photos.db"), "--api-key-file",
                      str(tmp / "key"), "--idle-ttl", "0", log_dir=tmp) as s:  # fmt: skip
        s.image = tmp / "red.png"
        yield s


def _open(browser: Chromium, url: str) -> None:
    browser.open(url)
    browser.wait_until("getComputedStyle(document.getElementById('keybox')).display !== 'none'")


def test_the_photos_page_says_what_is_wrong_with_the_key(server, browser):
    _open(browser, server.url + "/photos")
    shown = {}
    for key in [*CASES, KEY]:
        browser.evaluate("document.body.dataset.state = 'idle'")
        browser.evaluate(f"document.getElementById('key').value = {json.dumps(key)}")
        browser.evaluate("document.getElementById('q').value = 'a shape'")
        browser.evaluate("document.getElementById('search').requestSubmit()")
        shown[key] = (browser.wait_until(STATE), browser.evaluate(STATUS))
    # Before: "... send 'Authorization: Bearer <key>'" (words for API clients), and for the
    # curly quote fetch's own TypeError ("String contains non ISO-8859-1 code point").
    for key, want in CASES.items():
        assert shown[key][0] == "error" and want in shown[key][1], (key, shown[key])
        assert "Authorization" not in shown[key][1] and "No answer" not in shown[key][1]
    assert shown[KEY][0] == "done", shown[KEY]


def test_the_zero_shot_page_says_what_is_wrong_with_the_key(server, browser):
    _open(browser, server.url + "/")
    for key, want in CASES.items():
        browser.evaluate("document.body.dataset.state = 'idle'")
        browser.evaluate(f"document.getElementById('key').value = {json.dumps(key)}")
        browser.evaluate("document.getElementById('file').value = ''")  # the same file again
        browser.choose_file("#file", Path(server.image))
        assert browser.wait_until(STATE) == "error"
        status = browser.evaluate(STATUS)
        assert status.startswith("red.png: ") and want.lower() in status.lower(), (key, status)
    browser.evaluate("document.body.dataset.state = 'idle'")
    browser.evaluate(f"document.getElementById('key').value = {json.dumps(KEY)}")
    browser.evaluate("document.getElementById('run').click()")
    assert browser.wait_until(STATE) == "done", browser.evaluate(STATUS)
