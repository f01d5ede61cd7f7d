"""``votes.csv``: the arena's votes as the file DVC tracks and the arena stage reads (one owner of its columns).

Deterministic: the same database gives the same bytes (rows sorted by ``voted_ms`` then ``vote_id``, ``\\n`` line
ends, integers as written), so ``dvc status`` sees a change only when a vote was added. Written atomically.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ghostreview.arena.db import ORIGINS, SIDES, VOTE_COLUMNS, WINNERS, Vote, VoteDB
from ghostreview.errors import UserError
from ghostreview.util.atomic import write_text_atomic


def votes_csv_text(votes: Iterable[Vote]) -> str:
    """The CSV text of ``votes``, sorted by (voted_ms, vote_id), header first."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(VOTE_COLUMNS)
    for v in sorted(votes, key=lambda v: (v.voted_ms, v.vote_id)):
        w.writerow([getattr(v, c) for c in VOTE_COLUMNS])
    return buf.getvalue()


def export_votes(db_path: Path, out: Path) -> int:
    """Write every vote of the database ``db_path`` to ``out``; returns how many. A missing database exports a
    header-only file (a review with no arena yet still gives the arena stage its input)."""
    votes = list(VoteDB(db_path).votes()) if Path(db_path).is_file() else []
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, votes_csv_text(votes))
    return len(votes)


def write_votes(votes: Iterable[Vote], out: Path) -> Path:
    """Write ``votes`` straight to a votes file (the demo kit's synthetic votes)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(out, votes_csv_text(votes))


def read_votes(path: Path) -> pd.DataFrame:
    """The votes file as a table with :data:`VOTE_COLUMNS`; a missing column or a value outside the layout fails
    naming the file, the row and the fix."""
    try:
        table = pd.read_csv(path, dtype={"item": str, "vote_id": str, "voter": str}, keep_default_na=False)
    except FileNotFoundError as err:
        raise UserError(f"{path}: no such votes file; run `ghostreview arena export` (it writes an empty one "
                        "when there are no votes yet)") from err
    missing = [c for c in VOTE_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{path}: no column {missing[0]!r}: not a votes file `ghostreview arena export` writes")
    for column, allowed in (("winner", WINNERS), ("left_side", SIDES), ("origin", ORIGINS)):
        bad = ~table[column].isin(allowed)
        if bad.any():
            row = int(bad.to_numpy().argmax()) + 2
            raise UserError(f"{path}:{row}: {column} {table[column].iloc[row - 2]!r} is not one of "
                            f"{', '.join(allowed)}")
    if table["vote_id"].duplicated().any():
        raise UserError(f"{path}: vote_id {table['vote_id'][table['vote_id'].duplicated()].iloc[0]!r} repeats")
    return table[list(VOTE_COLUMNS)]
