"""The house rules, measured from the code: no import cycles, no stage reaching into the search runner, small rooms."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import architecture  # noqa: E402


def test_the_package_keeps_the_house_rules() -> None:
    findings = architecture.measure(ROOT)
    assert findings.cycles == []
    assert findings.runner_imports == []
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
    assert findings.runner_imports == ["muratune.report -> muratune.search.run"]
    assert findings.command_imports == ["muratune.report -> muratune.search.run"]


def test_only_the_cli_and_the_doctor_may_import_the_search_runner(tmp_path: Path) -> None:
    package = tmp_path / "muratune"
    for folder in ("search", "refit", "cli", "doctor"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "search" / "run.py").write_text("")
    (package / "search" / "job.py").write_text("")
    (package / "refit" / "run.py").write_text("from muratune.search.run import helper\n")  # a command module
    (package / "refit" / "plan.py").write_text("from muratune.search.job import helper\n")  # the shared room
    (package / "cli" / "search.py").write_text("from muratune.search.run import run_search\n")
    (package / "doctor" / "searches.py").write_text("from muratune.search.run import run_search\n")
    findings = architecture.measure(tmp_path)
    assert findings.runner_imports == ["muratune.refit.run -> muratune.search.run"]
    assert findings.command_imports == []


def test_a_package_whose_init_imports_its_modules_back_is_a_cycle(tmp_path: Path) -> None:
    package = tmp_path / "muratune" / "doctor"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("from muratune.doctor.run import run_doctor\n")
    (package / "run.py").write_text("from muratune.doctor import checks\n")  # a submodule, through its package
    (package / "checks.py").write_text("")
    findings = architecture.measure(tmp_path)
    assert findings.cycles == [["muratune.doctor", "muratune.doctor.run"]]
    (package / "__init__.py").write_text('"""The package re-exports nothing."""\n')
    assert architecture.measure(tmp_path).cycles == []
