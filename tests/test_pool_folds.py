"""scripts/pool_folds.py: pooled counts over folds, and the each-file-at-its-best ceiling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scriptload import load_script


def _metrics(path: Path, table: dict[str, tuple[int, int, int]]) -> Path:
    rows = {t: {"tp": tp, "fp": fp, "fn": fn} for t, (tp, fp, fn) in table.items()}
    path.write_text(json.dumps({"by_threshold": {"distance": rows}}))
    return path


def test_pooled_and_each_best(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pool_folds = load_script("pool_folds")
    # port a is best at 0.3 (F1 0.8), port b at 0.7 (F1 0.8); pooled, 0.5 is best (F1 0.70)
    a = _metrics(tmp_path / "a.json", {"0.30": (8, 2, 2), "0.50": (6, 2, 4), "0.70": (2, 0, 8)})
    b = _metrics(tmp_path / "b.json", {"0.30": (10, 30, 0), "0.50": (9, 6, 1), "0.70": (8, 2, 2)})
    out = tmp_path / "table.json"
    assert pool_folds.main([str(a), str(b), "--each-best", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    table = json.loads(out.read_text())
    by_t = {r["threshold"]: r for r in table["rows"]}
    assert (by_t[0.5]["tp"], by_t[0.5]["fp"], by_t[0.5]["fn"]) == (15, 8, 5)
    assert table["best"]["threshold"] == 0.5
    assert (table["each_best"]["tp"], table["each_best"]["fp"], table["each_best"]["fn"]) == (16, 4, 4)
    assert table["each_best"]["f1"] == pytest.approx(0.8)
    assert "each file at its own best threshold: F1 0.800" in printed

    # without the flag there is no ceiling; a file that is not evaluate's is refused in one line
    assert pool_folds.main([str(a), str(b), "--json", str(out)]) == 0
    assert "each_best" not in json.loads(out.read_text())
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    capsys.readouterr()
    assert pool_folds.main([str(a), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and len(err.strip().splitlines()) == 1
