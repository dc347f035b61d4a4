"""The house rules, measured from the code: no import cycles, no stage reaching into the tuner, small rooms."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import architecture  # noqa: E402


def test_the_package_keeps_the_house_rules() -> None:
    findings = architecture.measure(ROOT)
    assert findings.cycles == []
    assert findings.tuner_imports == []
    assert findings.command_imports == []
    assert findings.long_functions == []
    assert findings.long_modules == []


def test_the_measurement_finds_a_cycle_and_a_long_function(tmp_path: Path) -> None:
    package = tmp_path / "muratune"
    (package / "search").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from muratune import b\n")
    (package / "b.py").write_text("def f():\n    from muratune.a import x\n" + "    y = 1\n" * 70)
    (package / "search" / "__init__.py").write_text("")
    (package / "search" / "run.py").write_text("")
    (package / "report.py").write_text("import muratune.search.run\n")
    findings = architecture.measure(tmp_path)
    assert findings.cycles == [["muratune.a", "muratune.b"]]
    assert findings.long_functions == ["muratune.b.f (72 lines)"]
    assert findings.tuner_imports == ["muratune.report -> muratune.search.run"]
    assert findings.command_imports == ["muratune.report -> muratune.search.run"]
