"""`mailgate suppressions`: import a large CSV (checked first, written in batches),
export it back, list, add and remove; a bad row is named by line and field and nothing
is written; `mailgate keys create --sandbox`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tests.test_cli import mailgate

ROWS = 2_500


def test_import_export_list_add_remove(tmp_path: Path) -> None:
    assert mailgate("init", "--dir", str(tmp_path), cwd=tmp_path).returncode == 0
    cfg = str(tmp_path / "mailgate.toml")

    def run(*args: str, ok: bool = True) -> tuple[str, str]:
        done = mailgate("suppressions", *args, "-c", cfg, cwd=tmp_path)
        assert (done.returncode == 0) is ok, done.stderr
        return done.stdout, done.stderr

    source = tmp_path / "in.csv"
    lines = ["email,address,reason,domain"]  # extra columns are ignored
    lines += [f"x,User{i:05}@Big.test,unsubscribe," for i in range(ROWS)]
    lines.append("x,scoped@big.test,,brand.test")  # no reason: the --reason default
    source.write_text("\n".join(lines) + "\n")
    said, _ = run("import", str(source), "--reason", "complaint")
    assert f"imported {ROWS + 1}" in said

    exported, _ = run("export")
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert len(rows) == ROWS + 1
    assert rows[0]["address"] == "scoped@big.test"
    assert (rows[0]["reason"], rows[0]["domain"]) == ("complaint", "brand.test")
    assert rows[1]["address"] == "user00000@big.test" and rows[1]["reason"] == "unsubscribe"
    assert [r["address"] for r in rows[1:]] == sorted(r["address"] for r in rows[1:])

    # an export imports again as it is (times and causes kept), from a spreadsheet's
    # UTF-8 with a byte order mark too
    again = tmp_path / "again.csv"
    again.write_text("\ufeff" + exported, encoding="utf-8")
    assert f"imported {ROWS + 1}" in run("import", str(again))[0]
    assert run("export")[0] == exported

    bad = tmp_path / "bad.csv"
    bad.write_text("address,reason\nnew1@big.test,manual\nnot-an-address,manual\n")
    _, err = run("import", str(bad), ok=False)
    assert "line 3: address:" in err
    huge = tmp_path / "huge.csv"
    huge.write_text("address\n" + "x" * 200_000 + "@big.test\n")
    _, err = run("import", str(huge), ok=False)
    assert "line" in err and "Traceback" not in err
    listed, _ = run("list", "--prefix", "new1")
    assert "new1@big.test" not in listed, "nothing of a bad file is written"

    run("add", "Typed@Big.test", "--reason", "manual")
    assert "typed@big.test" in run("list", "--prefix", "typed")[0]
    assert "removed 1" in run("remove", "typed@big.test")[0]
    _, err = run("remove", "typed@big.test", ok=False)
    assert "not suppressed" in err

    made = mailgate("keys", "create", "--name", "dev", "--sandbox", "-c", cfg, cwd=tmp_path)
    assert made.returncode == 0 and "created sandbox key" in made.stderr
    listed_keys = mailgate("keys", "list", "-c", cfg, cwd=tmp_path).stdout
    assert "(sandbox)" in listed_keys
