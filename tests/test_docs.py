"""The docs agree with the code: one drawing of the experiment folder, links that resolve, named paths that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from muratune import layout

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_DRAWING_MARK = (
    "<!-- the experiment folder: every name is one muratune/layout.py defines (tests/test_docs.py) -->"
)
README_MAX_LINES = 150

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"(?<![\w./-])((?:muratune|tests|bench|tools|configs)/[\w./-]*[\w/])")
DOTTED_NAME = re.compile(r"(?<![\w.])muratune(?:\.\w+)+")
TEST_FILE = re.compile(r"(?<![\w/])(test_\w+\.py)\b")


OUTSIDE_EXPERIMENTS = {layout.BOXES_CSV}  # a synthetic dataset's file (docs/data.md), never in an experiment folder


def layout_names() -> set[str]:
    """Every file and folder name (or name prefix) of an experiment `muratune.layout` defines: its upper-case string
    constants, less the marker kinds (``*_KIND``, words inside ``.muratune``, not names on disk)."""
    constants = vars(layout).items()
    names = {
        value for key, value in constants if key.isupper() and not key.endswith("_KIND") and isinstance(value, str)
    }
    return names - OUTSIDE_EXPERIMENTS


def drawn_entries(drawing: str) -> list[tuple[int, str]]:
    """``(indent, name)`` for each line of a drawn folder tree below its root line; the name is the first column."""
    lines = [line for line in drawing.splitlines() if line.strip()]
    return [(len(line) - len(line.lstrip()), line.strip().split("  ")[0]) for line in lines[1:]]


def components(name: str) -> list[str]:
    """The folder and file names of a drawn path such as ``trials/trial_<id>/checkpoint_<n>/``."""
    return [part for part in name.split("/") if part]


def is_defined(component: str, names: set[str]) -> bool:
    """A defined name, or a defined prefix (or none) before a ``<placeholder>``, as in ``trial_<id>``."""
    if "<" not in component:
        return component in names
    prefix = component.split("<", 1)[0]
    return prefix == "" or prefix in names


def undefined_names(drawing: str, names: set[str]) -> list[str]:
    """The drawn names that `names` does not define."""
    return [part for _, name in drawn_entries(drawing) for part in components(name) if not is_defined(part, names)]


def drawn_names(drawing: str) -> set[str]:
    """Every name a drawing shows, and every prefix it shows before a placeholder."""
    return {part.split("<", 1)[0] for _, name in drawn_entries(drawing) for part in components(name)}


def top_level(drawing: str) -> set[str]:
    """The names drawn directly inside the drawing's root."""
    entries = drawn_entries(drawing)
    indent = min(indent for indent, _ in entries)
    return {components(name)[0] for level, name in entries if level == indent}


def layout_drawing() -> str:
    """The literal block of `muratune.layout`'s docstring: the source drawing of the experiment folder."""
    doc = layout.__doc__ or ""
    block = doc.split("::\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line.strip() and not line.startswith(" "):
            break
        lines.append(line)
    return "\n".join(lines)


def readme_drawing(text: str) -> str:
    """The fenced block that follows the README's drawing mark."""
    after = text.split(README_DRAWING_MARK, 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


def markdown_files() -> list[Path]:
    return [README, *DOCS]


def test_every_name_in_the_readme_drawing_is_one_layout_defines():
    drawing = readme_drawing(README.read_text(encoding="utf-8"))
    assert len(drawn_entries(drawing)) >= 10
    assert undefined_names(drawing, layout_names()) == []


def test_the_layout_drawing_shows_every_name_layout_defines_and_no_other():
    drawing = layout_drawing()
    assert undefined_names(drawing, layout_names()) == []
    assert layout_names() - drawn_names(drawing) == set()


def test_the_readme_and_layout_draw_the_same_experiment_folder():
    readme = readme_drawing(README.read_text(encoding="utf-8"))
    assert top_level(readme) == top_level(layout_drawing())
    assert {layout.CACHE_JSON, layout.TIME_BUDGET_REACHED} <= top_level(readme)


@pytest.mark.parametrize(
    ("planted", "unknown"),
    [
        ("  notes.txt                a file no stage writes", ["notes.txt"]),
        ("  trails/trial_<id>/       a misspelt folder", ["trails"]),
        ("  trials/trail_<id>/       a misspelt prefix", ["trail_<id>"]),
    ],
)
def test_a_planted_unknown_name_is_caught(planted: str, unknown: list[str]):
    drawing = (
        "runs/demo/\n  optuna.db                the Optuna study\n  trials/trial_<id>/checkpoint_<n>/   checkpoints\n"
    )
    assert undefined_names(drawing, layout_names()) == []
    assert undefined_names(drawing + planted + "\n", layout_names()) == unknown


def test_a_name_layout_defines_but_does_not_draw_is_caught():
    names = layout_names() | {"never_drawn.json"}
    assert names - drawn_names(layout_drawing()) == {"never_drawn.json"}


def test_the_readme_is_a_front_door_under_150_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES
    head = "\n".join(lines[:40])
    assert "make demo" in head and "make test" in head


@pytest.mark.parametrize("page", markdown_files(), ids=lambda path: path.name)
def test_every_relative_link_resolves_to_a_file(page: Path):
    targets = [target for target in LINK.findall(page.read_text(encoding="utf-8")) if "://" not in target]
    missing = [
        t for t in targets if not t.startswith(("#", "mailto:")) and not (page.parent / t.split("#")[0]).exists()
    ]
    assert missing == []


@pytest.mark.parametrize("page", markdown_files(), ids=lambda path: path.name)
def test_every_repository_path_and_test_file_named_exists(page: Path):
    text = page.read_text(encoding="utf-8")
    missing = [path for path in REPO_PATH.findall(text) if not (ROOT / path).exists()]
    missing += [name for name in TEST_FILE.findall(text) if not (ROOT / "tests" / name).exists()]
    assert missing == []


def module_name_exists(dotted: str) -> bool:
    """Whether ``muratune.a.b`` is a package or module, or a name defined at the top of one (``module.Name``)."""
    path = ROOT
    parts = dotted.split(".")
    for index, part in enumerate(parts):
        if (path / part).is_dir():
            path = path / part
            continue
        module = path / f"{part}.py" if (path / f"{part}.py").is_file() else path / "__init__.py"
        rest = parts[index + 1 :] if module.name != "__init__.py" else parts[index:]
        if not module.is_file() or len(rest) > 1:
            return False
        definition = re.compile(rf"^(?:def|class)\s+{rest[0]}\b|^{rest[0]}\s*[:=]", re.M) if rest else None
        return definition is None or bool(definition.search(module.read_text(encoding="utf-8")))
    return True


def test_every_module_named_in_the_docs_and_test_docstrings_exists():
    texts = [page.read_text(encoding="utf-8") for page in markdown_files()]
    texts += [(path.read_text(encoding="utf-8").split("\n", 1)[0]) for path in sorted((ROOT / "tests").glob("*.py"))]
    named = {name for text in texts for name in DOTTED_NAME.findall(text)}
    assert named, "expected the docs to name modules"
    assert sorted(name for name in named if not module_name_exists(name)) == []
