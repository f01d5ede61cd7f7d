"""Plumbing every folder shares, each fact with one owner: hashing, the runtime (device, threads), atomic writes,
names (slugs, "did you mean"), YAML reading. Imports nothing else of the project but ``errors``."""
