"""The arena under load on loopback: N concurrent voters for T seconds against a real uvicorn server, which is
killed (SIGKILL, no shutdown) and restarted once in the middle. Checks what the issue asks: no acknowledged vote is
lost and none is stored twice; reports votes/s and latencies.

    python -m benchmarks.arena_load [--voters 50] [--seconds 60] [--models 6] [--slots 40]

Each voter is a thread with its own HTTP client (its cookie): it opens the page, takes a pair, then votes as fast
as the server answers (the per-voter rate limit is raised out of the way; the limit itself is tested in
tests/test_arena_server.py). A vote is *acknowledged* when its 200 answer arrived. When the server is down a voter
re-sends the same vote until the new server answers: 200 (stored now) or 409 (a replay: the first server had
committed it before dying, unacknowledged). At the end the database must hold every acknowledged vote, each vote id
once, and nothing no voter sent.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

from benchmarks.common import load_average, machine_line


def write_images(root: Path, models: int, slots: int) -> Path:
    """Tiny PNGs for ``models`` x ``slots`` and the list the server reads (images.json)."""
    rows = []
    for m in range(models):
        for s in range(slots):
            path = root / f"model-{m}" / f"{s}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (40 * m % 256, 7 * s % 256, 90)).save(path)
            rows.append({"model": f"model-{m}", "slot": ["general", f"p{s // 2}", s % 2],
                         "image_hash": f"{m:04d}{s:060d}", "path": str(path), "prompt": f"prompt {s // 2}"})
    spec = root / "images.json"
    spec.write_text(json.dumps(rows))
    return spec


def serve(spec: Path, db: Path, port: int) -> None:
    """The server process: the arena app on 127.0.0.1:port (rate limit out of the way)."""
    import uvicorn

    from ghostreview.arena.pairs import ArenaImage
    from ghostreview.arena.server import ArenaConfig, create_app

    images = [ArenaImage(r["model"], tuple(r["slot"]), r["image_hash"], Path(r["path"]), r["prompt"])  # type: ignore
              for r in json.loads(spec.read_text())]
    app = create_app(ArenaConfig(db=db, images=images, rate=1e6, burst=10**6))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


def start_server(spec: Path, db: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.arena_load", "--serve", str(spec), str(db),
                             str(port)], cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the arena server did not start within 60 s")


@dataclass
class Voter:
    """One voter's record: acknowledged vote ids, ids found stored on a resend (409), latencies, errors."""

    acked: list[str] = field(default_factory=list)  # vote ids
    replayed: list[str] = field(default_factory=list)  # pair ids answered 409 on a resend
    sent: set[str] = field(default_factory=set)  # pair ids voted on
    latency: list[float] = field(default_factory=list)
    retries: int = 0
    refused: dict[int, int] = field(default_factory=dict)


def vote_ids(db: Path, pairs: set[str]) -> set[str]:
    """The vote ids the pair ids stand for (their sealed nonces: opened with the server's key, in the database)."""
    from ghostreview.arena.db import VoteDB
    from ghostreview.arena.server import Signer

    signer = Signer(VoteDB(db).secret())
    return {signer.unseal("pair", p)["n"] for p in pairs}  # type: ignore[index]


def until_up(fn: Callable[[], httpx.Response], me: Voter) -> httpx.Response:
    """``fn()`` retried while the server is down (connection refused or reset); the restarted server answers."""
    while True:
        try:
            return fn()
        except httpx.TransportError:
            me.retries += 1
            time.sleep(0.05)


def vote_loop(base: str, me: Voter, stop: threading.Event, k: int) -> None:
    choices = ("left", "right", "tie", "both_bad")
    with httpx.Client(base_url=base, timeout=30) as c:
        until_up(lambda: c.get("/"), me)
        pair = until_up(lambda: c.get("/api/pair"), me).json()["pair"]
        n = 0
        while not stop.is_set():
            body = {"pair": pair, "choice": choices[(k + n) % 4]}
            me.sent.add(pair)
            t0 = time.perf_counter()
            r = until_up(lambda body=body: c.post("/api/vote", json=body), me)
            if r.status_code == 200:
                me.latency.append(time.perf_counter() - t0)
                me.acked.append(r.json()["stored"])
                pair = r.json()["next"]["pair"]
            elif r.status_code == 409:  # stored by the killed server, its answer lost: take a new pair
                me.replayed.append(pair)
                pair = until_up(lambda: c.get("/api/pair"), me).json()["pair"]
            else:
                me.refused[r.status_code] = me.refused.get(r.status_code, 0) + 1
                pair = until_up(lambda: c.get("/api/pair"), me).json()["pair"]
            n += 1


def stored_ids(db: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT vote_id FROM votes")]


def run(voters: int, seconds: float, models: int, slots: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec, db = write_images(root / "img", models, slots), root / "votes.sqlite"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = start_server(spec, db, port)
        stop, records = threading.Event(), [Voter() for _ in range(voters)]
        threads = [threading.Thread(target=vote_loop, args=(f"http://127.0.0.1:{port}", r, stop, k), daemon=True)
                   for k, r in enumerate(records)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(seconds / 2)
        before_kill = sum(len(r.acked) for r in records)
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown, no flush: what a power cut does to the process
        proc.wait()
        killed_at = time.monotonic()
        proc = start_server(spec, db, port)
        down = time.monotonic() - killed_at
        time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        stop.set()
        for t in threads:
            t.join(60)
        elapsed = time.monotonic() - t0
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        ids = stored_ids(db)
        replayed = vote_ids(db, {p for r in records for p in r.replayed})
        sent = vote_ids(db, set().union(*(r.sent for r in records)))
    acked = [i for r in records for i in r.acked]
    lat = sorted(x for r in records for x in r.latency)
    refused: dict[int, int] = {}
    for r in records:
        for code, n in r.refused.items():
            refused[code] = refused.get(code, 0) + n
    return {"voters": voters, "seconds": round(elapsed, 1), "stored": len(ids), "acknowledged": len(acked),
            "acknowledged_before_kill": before_kill, "stored_unacknowledged": len(replayed),
            "lost": len(set(acked) - set(ids)), "duplicates": len(ids) - len(set(ids)),
            "stored_never_sent": len(set(ids) - sent), "unaccounted": len(set(ids) - set(acked) - set(replayed)),
            "refused": refused, "restart_s": round(down, 2), "votes_per_s": round(len(ids) / elapsed, 1),
            "latency_ms_p50": round(1000 * statistics.median(lat), 1) if lat else None,
            "latency_ms_p99": round(1000 * lat[int(0.99 * (len(lat) - 1))], 1) if lat else None,
            "retries": sum(r.retries for r in records)}


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voters", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--models", type=int, default=6)
    ap.add_argument("--slots", type=int, default=40)
    args = ap.parse_args()
    print(machine_line(), f"load {load_average()}", flush=True)
    result = run(args.voters, args.seconds, args.models, args.slots)
    print(json.dumps(result, indent=1))
    print(f"load after: {load_average()}")
    ok = result["lost"] == result["duplicates"] == result["stored_never_sent"] == 0
    print("OK: no acknowledged vote lost, none stored twice" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
