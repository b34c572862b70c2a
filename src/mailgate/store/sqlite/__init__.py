"""The SQLite backend: engine.py (connections, the write turn, the writer thread and its
group commit, checkpoints), tx.py (statements by name on a connection), bodies.py (large
bodies in segment files), store.py (the Store on that engine)."""

from mailgate.store.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
