"""The arena: people vote between two models' images of the same benchmark item and seed (``server``), the votes
live in SQLite (``db``) and are exported to a sorted CSV that DVC tracks (``export``); ``ratings`` turns them into a
human ranking and measures every judge against it. See docs/arena.md."""
