"""The arena page in Debian's chromium (Playwright) against a real uvicorn server on loopback: the page loads with
no request leaving the machine, a vote by click and votes by key each show the next pair, a prompt's markup is shown
as text, and every vote is in the database and in the export."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
import uvicorn
from test_arena_server import MODELS, PROMPT, arena_images

from ghostreview.arena.db import VoteDB
from ghostreview.arena.export import export_votes, read_votes
from ghostreview.arena.server import ArenaConfig, Signer, create_app

CHROMIUM = Path("/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path):
    config = ArenaConfig(db=tmp_path / "votes.sqlite", images=arena_images(tmp_path / "img"), seed=0)
    port = free_port()
    app = create_app(config)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        thread.join(0.05)
    yield f"http://127.0.0.1:{port}", app.state.arena.signer
    srv.should_exit = True
    thread.join(10)


def side_of(signer: Signer, pair_id: str, choice: str) -> str:
    """The winner a choice makes of a served pair (its sealed payload names the model on the left)."""
    body = signer.unseal("pair", pair_id)
    other = "model_b" if body["l"] == "model_a" else "model_a"
    return {"left": body["l"], "right": other}.get(choice, choice)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian chromium at /usr/bin/chromium")
def test_vote_by_click_and_keys_in_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    server, signer = server
    left: list[str] = []

    def guard(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:
            left.append(route.request.url)
            route.abort()

    expected = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route("**/*", guard)
            page.goto(server + "/")
            page.wait_for_selector("body[data-pair]")
            assert page.text_content("#prompt") == PROMPT  # markup shown as text, never parsed
            assert page.evaluate("() => window.pwned") is None
            assert page.evaluate("() => document.querySelectorAll('main img').length") == 2
            # data-pair is set when the pair's URLs are, before the images arrive: wait for them, then check them
            page.wait_for_function("() => [...document.images].every(i => i.complete)")
            assert page.evaluate("() => [...document.images].map(i => i.naturalWidth)") == [8, 8]
            for n, (how, choice) in enumerate([("click", "left"), ("ArrowRight", "right"), ("2", "tie"),
                                               ("click", "both_bad"), ("1", "left")], start=1):
                pair = page.get_attribute("body", "data-pair")
                expected.append(side_of(signer, pair, choice))
                if how == "click":
                    page.click(f"#vote-{choice}")
                else:
                    page.keyboard.press(how)
                page.wait_for_selector(f'body[data-votes="{n}"]')
                assert page.get_attribute("body", "data-pair") != pair  # the next pair is shown
            assert "Votes so far: 5" in page.text_content("#status")
            assert errors == [] and left == []
        finally:
            browser.close()
    stored = list(VoteDB(tmp_path / "votes.sqlite").votes())
    assert [v.winner for v in stored] == expected and {v.model_a for v in stored} <= set(MODELS)
    assert export_votes(tmp_path / "votes.sqlite", tmp_path / "votes.csv") == 5
    assert read_votes(tmp_path / "votes.csv")["winner"].tolist() == expected
