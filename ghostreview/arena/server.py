"""``ghostreview arena serve``: the voting page and its API (FastAPI), every asset served from this package.

Security rules (each refusal is answered with a 4xx, counted in the database's ``rejects`` under its reason, and
never stored):
- A host that is not loopback needs a join token (:func:`check_host`); the page sets a voter cookie only for a
  request carrying it. On loopback anyone who reaches the port may vote.
- Each voter is a random id in an HMAC-signed cookie (``no_voter``: missing or forged cookie, 401).
- Each served pair is a pair id naming the voter, the slot, both models, their images and the sides, encrypted (the
  voter cannot read the models' names from it) and signed under the database's secret. A vote
  must answer a pair id signed by this server (``forged``, 403) for this voter (``other_voter``, 403), naming models
  and images this arena shows (``unknown_model``, 403), once (``replay``, 409: the pair id's nonce is the vote's
  primary key).
- A body over ``body_limit`` bytes (``too_large``, 413), not a JSON object (``bad_json``, 400), with fields other
  than ``pair`` and ``choice`` or a choice outside :data:`CHOICES` (``bad_fields``, 422).
- Per voter, a token bucket of ``burst`` votes refilled at ``rate`` per second (``rate``, 429).
A vote is committed before the answer that carries the next pair, so an acknowledged vote survives a killed server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import random
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ghostreview.arena.db import Duplicate, Vote, VoteDB
from ghostreview.arena.pairs import ArenaImage, PairChooser, Slot, model_pairs
from ghostreview.errors import UserError

CHOICES = {"left": None, "right": None, "tie": "tie", "both_bad": "both_bad"}  # left/right resolved per pair
COOKIE = "ghostreview_voter"
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'"
STATIC = {"arena.js": "text/javascript", "arena.css": "text/css"}


class Refused(Exception):
    """A request the arena refuses: HTTP ``status``, counted under ``reason``."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, token: str | None) -> None:
    """A UserError when ``host`` is reachable from other machines and no join token is set."""
    if not is_loopback(host) and not token:
        raise UserError(f"--host {host} lets other machines vote: give a join token (--token, at least 16 "
                        "characters; share the page's URL with ?token=... with your voters), or serve on 127.0.0.1")
    if token is not None and len(token) < 16:
        raise UserError("--token is shorter than 16 characters: use e.g. `python -c \"import secrets; "
                        "print(secrets.token_urlsafe(16))\"`")


@dataclass(frozen=True)
class ArenaConfig:
    """What the server needs: the vote database, the images it may show and its limits."""

    db: Path
    images: Sequence[ArenaImage]
    host: str = "127.0.0.1"
    token: str | None = None
    rate: float = 2.0  # votes per second per voter, sustained (a person needs a few seconds per pair)
    burst: int = 10
    body_limit: int = 2048
    warmup: int = 5
    seed: int | None = None  # pair draws and sides; None: fresh randomness


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """HMAC-SHA256 tags under the database's secret, one purpose prefix per kind of token."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def tag(self, kind: str, payload: str) -> str:
        return b64(hmac.new(self.secret, f"{kind}:{payload}".encode(), hashlib.sha256).digest())

    def sign(self, kind: str, payload: str) -> str:
        return f"{payload}.{self.tag(kind, payload)}"

    def open(self, kind: str, token: str) -> str | None:
        """The payload of a token this signer made, else None."""
        payload, _, tag = token.rpartition(".")
        return payload if payload and hmac.compare_digest(tag, self.tag(kind, payload)) else None

    def stream(self, nonce: bytes, n: int) -> bytes:
        """``n`` key-stream bytes for ``nonce``: HMAC-SHA256 as a PRF in counter mode."""
        blocks = (hmac.new(self.secret, b"stream:" + nonce + i.to_bytes(4, "big"), hashlib.sha256).digest()
                  for i in range(-(-n // 32)))
        return b"".join(blocks)[:n]

    def seal(self, kind: str, doc: Mapping[str, object]) -> str:
        """``doc`` as an opaque signed token: encrypted (so a pair id does not name its models to the voter), then
        tagged (encrypt-then-MAC)."""
        plain, nonce = json.dumps(doc, separators=(",", ":")).encode(), secrets.token_bytes(16)
        cipher = bytes(a ^ b for a, b in zip(plain, self.stream(nonce, len(plain))))
        return self.sign(kind, b64(nonce + cipher))

    def unseal(self, kind: str, token: str) -> dict | None:
        """The document of a token :meth:`seal` made with this key, else None."""
        payload = self.open(kind, token)
        if payload is None:
            return None
        raw = unb64(payload)
        nonce, cipher = raw[:16], raw[16:]
        return json.loads(bytes(a ^ b for a, b in zip(cipher, self.stream(nonce, len(cipher)))))


@dataclass
class Bucket:
    tokens: float
    at: float


@dataclass
class Arena:
    """The server's state: database, chooser, signer, image index, per-voter buckets."""

    config: ArenaConfig
    db: VoteDB
    chooser: PairChooser
    signer: Signer
    by_slot: dict[tuple[Slot, str], ArenaImage]
    by_hash: dict[str, ArenaImage]
    rng: random.Random
    buckets: dict[str, Bucket] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, config: ArenaConfig) -> Arena:
        db = VoteDB(config.db)
        rng = random.Random(config.seed)
        chooser = PairChooser(model_pairs(config.images), rng, warmup=config.warmup)
        for v in db.votes():  # a restarted server goes on where the votes stand
            if (v.model_a, v.model_b) in chooser.pairs:
                chooser.record(v.model_a, v.model_b, (v.task, v.item, v.seed), v.winner)
        return cls(config, db, chooser, Signer(db.secret()), {(im.slot, im.model): im for im in config.images},
                   {im.image_hash: im for im in config.images}, rng)

    def refuse(self, status: int, reason: str, detail: str) -> Refused:
        self.db.reject(reason)
        return Refused(status, reason, detail)

    def new_voter(self) -> str:
        return self.signer.sign("voter", secrets.token_hex(8))

    def voter(self, request: Request) -> str:
        """The voter id of a request's signed cookie; refused (401) without one."""
        voter = self.signer.open("voter", request.cookies.get(COOKIE, ""))
        if voter is None:
            raise self.refuse(401, "no_voter", "no voter cookie: open the arena's page first (with its ?token=)")
        return voter

    def take(self, voter: str) -> None:
        """One vote from the voter's bucket; refused (429) when it is empty."""
        now, c = time.monotonic(), self.config
        with self.lock:
            b = self.buckets.setdefault(voter, Bucket(float(c.burst), now))
            b.tokens = min(float(c.burst), b.tokens + (now - b.at) * c.rate)
            b.at = now
            if b.tokens < 1:
                raise self.refuse(429, "rate", f"more than {c.rate:g} votes per second: slow down")
            b.tokens -= 1

    def serve(self, voter: str) -> dict[str, object]:
        """A new pair for ``voter``: its signed id, the prompt and the two image URLs (left, right)."""
        slot, a, b = self.chooser.choose()
        left = "model_a" if self.rng.random() < 0.5 else "model_b"
        ia, ib = self.by_slot[(slot, a)], self.by_slot[(slot, b)]
        body = {"n": secrets.token_hex(12), "v": voter, "s": list(slot), "a": a, "b": b, "ia": ia.image_hash,
                "ib": ib.image_hash, "l": left, "t": int(time.time() * 1000)}
        pair = self.signer.seal("pair", body)
        shown = (ia, ib) if left == "model_a" else (ib, ia)
        return {"pair": pair, "prompt": ia.prompt, "left": f"/image/{shown[0].image_hash}",
                "right": f"/image/{shown[1].image_hash}"}

    def parse(self, raw: bytes) -> tuple[str, str]:
        """(pair id, choice) of a vote body, or refused."""
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise self.refuse(400, "bad_json", "the body is not JSON") from err
        if not isinstance(doc, dict):
            raise self.refuse(400, "bad_json", "the body is not a JSON object")
        if set(doc) != {"pair", "choice"} or not isinstance(doc["pair"], str) or doc["choice"] not in CHOICES:
            raise self.refuse(422, "bad_fields", f"a vote is {{\"pair\": <id>, \"choice\": one of "
                                                 f"{', '.join(CHOICES)}}} and nothing else")
        return doc["pair"], doc["choice"]

    def vote_of(self, voter: str, pair: str, choice: str) -> Vote:
        """The vote a checked pair id and choice make, or refused."""
        body = self.signer.unseal("pair", pair)
        if body is None:
            raise self.refuse(403, "forged", "this pair id was not signed by this arena")
        if body["v"] != voter:
            raise self.refuse(403, "other_voter", "this pair was served to another voter")
        slot = (str(body["s"][0]), str(body["s"][1]), int(body["s"][2]))
        for model, image in ((body["a"], body["ia"]), (body["b"], body["ib"])):
            shown = self.by_slot.get((slot, model))
            if shown is None or shown.image_hash != image:
                raise self.refuse(403, "unknown_model", "the pair names a model or image this arena does not show")
        side = {"left": body["l"], "right": "model_b" if body["l"] == "model_a" else "model_a"}
        winner = side.get(choice) or str(CHOICES[choice])
        return Vote(body["n"], voter, slot[0], slot[1], slot[2], body["a"], body["b"], body["ia"], body["ib"],
                    winner, body["l"], "arena", int(body["t"]), int(time.time() * 1000))

    def store(self, vote: Vote) -> None:
        """Commit ``vote`` (refused as a replay when its pair was answered already), then count it for pair choice."""
        try:
            self.db.add(vote)
        except Duplicate as err:
            raise self.refuse(409, "replay", "this pair was voted on already") from err
        self.chooser.record(vote.model_a, vote.model_b, (vote.task, vote.item, vote.seed), vote.winner)


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it passes ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def static_text(name: str) -> str:
    return resources.files("ghostreview.arena").joinpath("static", name).read_text(encoding="utf-8")


def create_app(config: ArenaConfig) -> FastAPI:
    """The arena's app (``uvicorn`` serves it; tests drive it with TestClient)."""
    check_host(config.host, config.token)
    arena = Arena.open(config)
    app = FastAPI(title="GhostReview arena", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.arena = arena

    @app.exception_handler(Refused)
    async def refused(request: Request, err: Refused) -> JSONResponse:
        return JSONResponse({"error": err.reason, "detail": err.detail}, status_code=err.status)

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.get("/")
    def page(request: Request, token: str | None = None) -> Response:
        has = arena.signer.open("voter", request.cookies.get(COOKIE, "")) is not None
        if config.token and not has and not (token and hmac.compare_digest(token, config.token)):
            arena.db.reject("no_token")
            return Response("This arena needs its join token: open the URL you were given (…/?token=…).",
                            status_code=401, media_type="text/plain")
        response = Response(static_text("arena.html"), media_type="text/html")
        if not has:
            response.set_cookie(COOKIE, arena.new_voter(), httponly=True, samesite="strict", max_age=10 ** 8)
        return response

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            return Response(status_code=404)
        return Response(static_text(name), media_type=STATIC[name])

    @app.get("/api/pair")
    def pair(request: Request) -> dict[str, object]:
        return arena.serve(arena.voter(request))

    @app.post("/api/vote")
    async def vote(request: Request) -> dict[str, object]:
        voter = arena.voter(request)
        raw = await read_limited(request, config.body_limit)
        if raw is None:
            raise arena.refuse(413, "too_large", f"a vote body is at most {config.body_limit} bytes")
        pair_id, choice = arena.parse(raw)
        arena.take(voter)
        made = arena.vote_of(voter, pair_id, choice)
        await run_in_threadpool(arena.store, made)  # committed before the next pair is served
        return {"stored": made.vote_id, "next": arena.serve(voter)}

    @app.get("/image/{image_hash}")
    def image(image_hash: str, request: Request) -> FileResponse:
        arena.voter(request)
        shown = arena.by_hash.get(image_hash)
        if shown is None:
            raise arena.refuse(404, "unknown_image", "no such image in this arena")
        return FileResponse(shown.path, media_type="image/png")

    return app


def serve_arena(config: ArenaConfig, port: int) -> None:
    """Serve the arena until interrupted (uvicorn, one process: the database has one writer)."""
    import uvicorn

    app = create_app(config)
    where = f"http://{'localhost' if is_loopback(config.host) else config.host}:{port}/"
    join = f"?token={config.token}" if config.token else ""
    print(f"arena: {len(config.images)} images, {len(app.state.arena.chooser.pairs)} model pairs, "
          f"{app.state.arena.db.count()} votes so far in {config.db}; voters open {where}{join}", flush=True)
    uvicorn.run(app, host=config.host, port=port, log_level="warning")
