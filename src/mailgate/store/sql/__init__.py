"""The store's SQL, read from named files: common.sql for what both backends run as
written, sqlite.sql / postgres.sql for what each runs its own way.

A statement starts at a `-- name: <name>` line and runs to the next one; comment lines
inside it are notes for the reader and are dropped. `{message_columns}`-style fields are
the column lists of store/rows.py. Parameters are `?`; PostgreSQL's numbered `$1, $2…`
are made from them here, once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from mailgate.store.rows import COLUMNS

HERE = Path(__file__).parent
Dialect = Literal["sqlite", "postgres"]
_NAME = re.compile(r"^-- name: (\w+)\s*$")


def parse(text: str) -> dict[str, str]:
    """The named statements of one file, their comment lines dropped."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if m := _NAME.match(line):
            if m.group(1) in out:  # a second one would be glued to the first
                raise ValueError(f"store SQL: statement {m.group(1)!r} is named twice")
            current = out[m.group(1)] = []
        elif current is not None and line.strip() and not line.lstrip().startswith("--"):
            current.append(line.strip())
    return {name: " ".join(lines).format(**COLUMNS) for name, lines in out.items()}


def numbered(sql: str) -> str:
    """`?` parameters as PostgreSQL's `$1, $2…` (the store's SQL has no `?` in literals)."""
    count = 0

    def next_mark(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"${count}"

    return re.sub(r"\?", next_mark, sql)


def statements(dialect: Dialect) -> dict[str, str]:
    """Every statement one backend runs, by name."""
    found = parse((HERE / "common.sql").read_text())
    for path in sorted(HERE.glob("*.sql")):  # a feature's own file (grants.sql): common too
        if path.stem not in ("common", "sqlite", "postgres"):
            if twice := found.keys() & (more := parse(path.read_text())).keys():
                raise ValueError(f"store SQL: {sorted(twice)} named again in {path.name}")
            found.update(more)
    own = parse((HERE / f"{dialect}.sql").read_text())
    if twice := found.keys() & own.keys():  # one name, one statement: no silent override
        raise ValueError(f"store SQL: {sorted(twice)} in both common.sql and {dialect}.sql")
    found.update(own)
    if dialect == "postgres":
        found = {name: numbered(sql) for name, sql in found.items()}
    return found
