"""The arena's server through FastAPI's TestClient: a vote is stored once, committed before the next pair, and every
bad request of the issue's list is refused with its 4xx, counted and never stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ghostreview.arena.db import VoteDB
from ghostreview.arena.export import export_votes, read_votes
from ghostreview.arena.pairs import ArenaImage
from ghostreview.arena.server import COOKIE, ArenaConfig, Signer, b64, create_app, unb64
from ghostreview.errors import UserError

MODELS = ("model-a", "model-b", "model-c")
PROMPT = 'a <img src=x onerror="window.pwned=1"> cat & "dog"'


def arena_images(root: Path, models=MODELS, seeds=(0, 1)) -> list[ArenaImage]:
    """Tiny PNGs of each model for two slots of one general prompt (one colour per model)."""
    out = []
    for k, model in enumerate(models):
        for seed in seeds:
            path = root / model / f"{k}{seed}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (40 * k, 100, 20 * seed)).save(path)
            out.append(ArenaImage(model, ("general", "p1", seed), f"{k:02d}{seed:062d}", path, PROMPT))
    return out


def client(tmp_path: Path, **kw) -> TestClient:
    config = ArenaConfig(db=tmp_path / "votes.sqlite", images=arena_images(tmp_path / "img"), seed=0, **kw)
    c = TestClient(create_app(config))
    return c


@pytest.fixture
def voter(tmp_path):
    c = client(tmp_path)
    assert c.get("/").status_code == 200
    return c


def stored(tmp_path) -> int:
    return VoteDB(tmp_path / "votes.sqlite").count()


def rejects(tmp_path) -> dict:
    return dict(VoteDB(tmp_path / "votes.sqlite").rejects())


def test_a_vote_is_stored_and_the_answer_carries_the_next_pair(voter, tmp_path):
    pair = voter.get("/api/pair").json()
    assert pair["prompt"] == PROMPT and pair["left"] != pair["right"]
    r = voter.post("/api/vote", json={"pair": pair["pair"], "choice": "left"})
    assert r.status_code == 200, r.text
    assert stored(tmp_path) == 1  # committed before the answer: a fresh connection sees it
    nxt = r.json()["next"]
    assert nxt["pair"] != pair["pair"]
    (vote,) = VoteDB(tmp_path / "votes.sqlite").votes()
    body = voter.app.state.arena.signer.unseal("pair", pair["pair"])
    assert vote.winner == body["l"] and vote.left_side == body["l"]  # "left" is whichever model was on the left
    left_hash = pair["left"].rsplit("/", 1)[1]
    assert left_hash == (vote.image_a if vote.winner == "model_a" else vote.image_b)
    assert vote.model_a < vote.model_b and vote.origin == "arena"


@pytest.mark.parametrize("choice, winner", [("tie", "tie"), ("both_bad", "both_bad")])
def test_tie_and_both_bad(voter, tmp_path, choice, winner):
    pair = voter.get("/api/pair").json()
    assert voter.post("/api/vote", json={"pair": pair["pair"], "choice": choice}).status_code == 200
    assert next(VoteDB(tmp_path / "votes.sqlite").votes()).winner == winner


def test_the_page_and_images_are_served_locally(voter):
    page = voter.get("/")
    assert "/static/arena.js" in page.text and "http" not in page.text.split("<body>")[1]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert voter.get("/static/arena.js").status_code == 200
    pair = voter.get("/api/pair").json()
    img = voter.get(pair["left"])
    assert img.status_code == 200 and img.content[:4] == b"\x89PNG"


def test_a_replayed_pair_is_refused_counted_and_not_stored(voter, tmp_path):
    pair = voter.get("/api/pair").json()["pair"]
    assert voter.post("/api/vote", json={"pair": pair, "choice": "left"}).status_code == 200
    r = voter.post("/api/vote", json={"pair": pair, "choice": "right"})
    assert r.status_code == 409 and r.json()["error"] == "replay"
    assert stored(tmp_path) == 1 and rejects(tmp_path) == {"replay": 1}


def test_a_pair_served_to_another_voter_is_refused(tmp_path):
    a, b = client(tmp_path), None
    a.get("/")
    b = TestClient(a.app)
    b.get("/")
    assert a.cookies[COOKIE] != b.cookies[COOKIE]
    pair = a.get("/api/pair").json()["pair"]
    r = b.post("/api/vote", json={"pair": pair, "choice": "left"})
    assert r.status_code == 403 and r.json()["error"] == "other_voter"
    assert stored(tmp_path) == 0 and rejects(tmp_path) == {"other_voter": 1}


def resign(signer: Signer, pair: str, **changes) -> str:
    return signer.seal("pair", {**signer.unseal("pair", pair), **changes})


def test_a_pair_id_does_not_name_its_models(voter):
    pair = voter.get("/api/pair").json()["pair"]
    payload = pair.rpartition(".")[0]
    assert not any(m.encode() in unb64(payload) for m in MODELS) and "model" not in pair
    assert voter.app.state.arena.signer.unseal("pair", pair)["a"] in MODELS


def test_a_forged_model_name_is_refused(voter, tmp_path):
    pair = voter.get("/api/pair").json()["pair"]
    payload, _, tag = pair.rpartition(".")
    raw = bytearray(unb64(payload))
    raw[-3] ^= 0x01  # an edited byte of the sealed names, under the old tag
    forged = f"{b64(bytes(raw))}.{tag}"
    r = voter.post("/api/vote", json={"pair": forged, "choice": "left"})
    assert r.status_code == 403 and r.json()["error"] == "forged"
    other = Signer(b"\x00" * 32).seal("pair", voter.app.state.arena.signer.unseal("pair", pair))  # another key
    assert voter.post("/api/vote", json={"pair": other, "choice": "left"}).json()["error"] == "forged"
    # even signed with the arena's own key, a model (or image) this arena does not show is refused
    signer = voter.app.state.arena.signer
    for change in ({"a": "model-x"}, {"ia": "f" * 64}):
        r = voter.post("/api/vote", json={"pair": resign(signer, pair, **change), "choice": "left"})
        assert r.status_code == 403 and r.json()["error"] == "unknown_model"
    assert stored(tmp_path) == 0 and rejects(tmp_path) == {"forged": 2, "unknown_model": 2}


@pytest.mark.parametrize("body, status, reason", [
    ({"pair": "x", "choice": "left", "model": "model-a"}, 422, "bad_fields"),
    ({"pair": "x"}, 422, "bad_fields"),
    ({"pair": "x", "choice": "model-a"}, 422, "bad_fields"),
    ({"pair": 3, "choice": "left"}, 422, "bad_fields"),
    (["pair", "left"], 400, "bad_json"),
])
def test_unknown_or_missing_fields_are_refused(voter, tmp_path, body, status, reason):
    r = voter.post("/api/vote", json=body)
    assert r.status_code == status and r.json()["error"] == reason
    assert stored(tmp_path) == 0 and rejects(tmp_path) == {reason: 1}


def test_a_body_over_the_limit_is_refused_unread(voter, tmp_path):
    pair = voter.get("/api/pair").json()["pair"]
    big = json.dumps({"pair": pair, "choice": "left", "pad": "x" * 3000})
    r = voter.post("/api/vote", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    chunked = voter.post("/api/vote", content=iter([big[:1500].encode(), big[1500:].encode()]))  # no length given
    assert chunked.status_code == 413
    assert voter.post("/api/vote", content=b"not json{").status_code == 400
    assert stored(tmp_path) == 0 and rejects(tmp_path) == {"too_large": 2, "bad_json": 1}


def test_no_cookie_or_a_forged_cookie_is_refused(tmp_path):
    c = client(tmp_path)
    assert c.get("/api/pair").status_code == 401
    c.cookies.set(COOKIE, "deadbeef.notatag")
    assert c.post("/api/vote", json={"pair": "x", "choice": "left"}).status_code == 401
    assert rejects(tmp_path) == {"no_voter": 2}


def test_a_lan_host_needs_a_token_and_the_page_asks_for_it(tmp_path):
    with pytest.raises(UserError, match="join token"):
        client(tmp_path, host="0.0.0.0")
    c = client(tmp_path, host="0.0.0.0", token="t" * 20)
    assert c.get("/").status_code == 401 and COOKIE not in c.cookies
    assert c.get("/?token=" + "u" * 20).status_code == 401
    assert c.get("/?token=" + "t" * 20).status_code == 200 and COOKIE in c.cookies
    assert c.get("/api/pair").status_code == 200  # the cookie is the voter from now on
    assert rejects(tmp_path) == {"no_token": 2}


def test_the_rate_limit_refuses_votes_past_the_burst(tmp_path):
    c = client(tmp_path, rate=1e-9, burst=2)
    c.get("/")
    pair = c.get("/api/pair").json()["pair"]
    for _ in range(2):
        pair = c.post("/api/vote", json={"pair": pair, "choice": "tie"}).json()["next"]["pair"]
    r = c.post("/api/vote", json={"pair": pair, "choice": "tie"})
    assert r.status_code == 429 and stored(tmp_path) == 2 and rejects(tmp_path) == {"rate": 1}


def test_pair_ids_survive_a_restart(tmp_path):
    first = client(tmp_path)
    first.get("/")
    pair = first.get("/api/pair").json()["pair"]
    first.app.state.arena.db.close()
    second = TestClient(create_app(ArenaConfig(db=tmp_path / "votes.sqlite",
                                               images=arena_images(tmp_path / "img"), seed=1)))
    second.cookies.update(first.cookies)
    assert second.post("/api/vote", json={"pair": pair, "choice": "right"}).status_code == 200
    assert second.post("/api/vote", json={"pair": pair, "choice": "right"}).status_code == 409


def test_export_is_sorted_deterministic_and_read_back(voter, tmp_path):
    pair = voter.get("/api/pair").json()["pair"]
    for choice in ("left", "right", "tie", "both_bad"):
        pair = voter.post("/api/vote", json={"pair": pair, "choice": choice}).json()["next"]["pair"]
    out = tmp_path / "votes.csv"
    assert export_votes(tmp_path / "votes.sqlite", out) == 4
    text = out.read_bytes()
    export_votes(tmp_path / "votes.sqlite", out)
    assert out.read_bytes() == text
    table = read_votes(out)
    assert list(table["winner"]) == [v.winner for v in VoteDB(tmp_path / "votes.sqlite").votes()]
    assert {"tie", "both_bad"} <= set(table["winner"]) and len(table) == 4
    assert list(table["voted_ms"]) == sorted(table["voted_ms"])
    assert export_votes(tmp_path / "none.sqlite", tmp_path / "empty.csv") == 0
    assert read_votes(tmp_path / "empty.csv").empty
