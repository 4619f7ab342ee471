"""Persistence: one interface (``base.Storage``), an SQLite and an in-memory backend."""
