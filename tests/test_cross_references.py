"""Every repo file a module docstring, comment or document names exists, and every ``ray_rthpo.x.y`` name
they use resolves: a file moved or renamed (the old ``training`` steppers module, say) leaves no stale
reference behind.

Scanned: every .py file under ray_rthpo/, experiments/, examples/ and tests/, every .md file under docs/,
and README.md. Checked in them:

* repo-relative paths under the repo's own folders (``ray_rthpo/optim/rthpo.py``, ``docs/beta.md``,
  ``configs/digits.yaml``, ``experiments/gpu_checks.sh``, ``examples/tabular/``, ...) exist; a path with a
  placeholder (``configs/table1/NAME.yaml``) must match at least one file;
* package-relative module paths (``training/methods.py`` for ray_rthpo/training/methods.py) exist;
* dotted names ``ray_rthpo.a.b.c`` name a module, a module-level name of the module they reach (a
  function, class, constant or import), or a member of such a class;
* relative Markdown links (``[text](beta.md#section)``) of the documents reach a file, from the document's
  folder.

Paths under the folders that runs write (runs/, results/) are not checked: they start with none of the
folders below. Files written only by a run that cannot happen here are in :data:`WRITTEN_BY_RUNS`.
No import of the scanned modules: names are read from their source.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ray_rthpo"

#: The repo's own top-level folders: a path starting with one of these must exist.
FOLDERS = ("ray_rthpo", "tests", "experiments", "docs", "configs", "examples", ".ci")

#: Placeholders a path may hold for a name the reader chooses; each matches one path component part.
#: ``configs/table1/NAME.yaml`` is checked as the glob ``configs/table1/*.yaml``.
PLACEHOLDERS = ("NAME", "CELL", "JSON_STEM", "<model>", "<name>", "<workload>")

#: Files that only a run writes, which cannot run here (path -> what writes it).
WRITTEN_BY_RUNS = {
    # docs/performance.md shows the command; its CUDA tables are measured on a GPU machine
    "docs/perf/bench_step_cost_cuda.json": "python experiments/bench_step_cost.py --device cuda",
}

#: Stale references being fixed by a change in progress ("file:reference" -> what it should say): each entry
#: is a known fault, skipped until its file is fixed; delete the entry then. Empty: every reference resolves.
KNOWN_STALE: dict[str, str] = {}

_FOLDERS = "|".join(re.escape(f) for f in FOLDERS)
_PATH = re.compile(rf"(?<![\w./~<>-])((?:{_FOLDERS})/[\w./*<>-]*)")
_DOTTED = re.compile(r"(?<![\w.])(ray_rthpo(?:\.\w+)+)")


def scanned_files() -> list[Path]:
    # not this file: it names stale references on purpose (KNOWN_STALE, the self-test)
    files = [p for folder in ("ray_rthpo", "experiments", "examples", "tests")
             for p in sorted((REPO / folder).rglob("*.py"))
             if "__pycache__" not in p.parts and p != Path(__file__).resolve()]
    return files + sorted((REPO / "docs").rglob("*.md")) + [REPO / "README.md"]


def subpackages() -> tuple[str, ...]:
    return tuple(sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")))


def references(pattern: re.Pattern[str]) -> Iterator[tuple[str, int, str]]:
    """(file relative to the repo, line number, reference) for every match of ``pattern``."""
    for path in scanned_files():
        rel = path.relative_to(REPO).as_posix()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in pattern.finditer(line):
                yield rel, number, match.group(1).rstrip(".")


def path_exists(ref: str) -> bool:
    target = ref.rstrip("/")
    for placeholder in PLACEHOLDERS:
        target = target.replace(placeholder, "*")
    if "*" in target:
        return any(REPO.glob(target))
    return (REPO / target).exists()


def test_every_repo_path_named_exists() -> None:
    missing, used = [], set()
    for rel, number, ref in references(_PATH):
        if ref in WRITTEN_BY_RUNS:
            used.add(ref)
        elif not path_exists(ref):
            missing.append(f"{rel}:{number}: {ref}")
    package_relative = re.compile(rf"(?<![\w./~-])((?:{'|'.join(subpackages())})/[\w/]+\.py)\b")
    for rel, number, ref in references(package_relative):
        if not (PACKAGE / ref).exists() and not (REPO / ref).exists():
            missing.append(f"{rel}:{number}: {ref} (as ray_rthpo/{ref})")
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)
    unused = set(WRITTEN_BY_RUNS) - used
    assert not unused, f"WRITTEN_BY_RUNS entries that no file names any more (delete them): {unused}"


def test_every_relative_markdown_link_reaches_a_file() -> None:
    link = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
    broken = []
    for path in [p for p in scanned_files() if p.suffix == ".md"]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in link.finditer(line):
                target = match.group(1)
                if not re.match(r"[a-z]+:", target) and not (path.parent / target).exists():  # not a URL
                    broken.append(f"{path.relative_to(REPO).as_posix()}:{number}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def module_file(parts: list[str]) -> Path | None:
    base = REPO.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def module_names(path: Path) -> dict[str, ast.AST]:
    """The names ``path`` defines or imports at module level (inside if/try blocks too)."""
    names: dict[str, ast.AST] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.setdefault(node.name, node)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.setdefault((alias.asname or alias.name).split(".")[0], node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for name in (n for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)):
                names.setdefault(name.id, node)
    return names


def class_members(node: ast.ClassDef) -> set[str]:
    members = set()
    for sub in ast.walk(node):
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            members.add(sub.name)
        elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
            members.add(sub.id)
        elif isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store):
            members.add(sub.attr)  # self.x = ...
    return members


def dotted_problem(dotted: str) -> str | None:
    """Why ``ray_rthpo.a.b.c`` does not resolve, or None."""
    parts = dotted.split(".")
    depth = 1
    while depth < len(parts) and module_file(parts[:depth + 1]) is not None:
        depth += 1
    if depth == len(parts):
        return None
    module = module_file(parts[:depth])
    assert module is not None
    names = module_names(module)
    name = parts[depth]
    if name not in names:
        return f"{'.'.join(parts[:depth])} has no {name}"
    node = names[name]
    member = parts[depth + 1] if depth + 1 < len(parts) else None
    if isinstance(node, ast.ClassDef) and member is not None and member not in class_members(node):
        return f"class {'.'.join(parts[:depth + 1])} has no {parts[depth + 1]}"
    return None


def test_every_dotted_ray_rthpo_name_resolves() -> None:
    stale = []
    for rel, number, ref in references(_DOTTED):
        why = dotted_problem(ref)
        if why is not None and f"{rel}:{ref}" not in KNOWN_STALE:
            stale.append(f"{rel}:{number}: {ref}: {why}")
    assert not stale, "names that do not resolve:\n" + "\n".join(stale)


def test_the_checks_catch_a_stale_reference() -> None:
    """The checks themselves: a deleted module, a missing function and a placeholder path."""
    gone = "no_such_module"
    assert not path_exists(f"ray_rthpo/training/{gone}.py")
    assert path_exists("ray_rthpo/training/methods.py") and path_exists("configs/table1/NAME.yaml")
    assert dotted_problem(f"ray_rthpo.training.{gone}") == f"ray_rthpo.training has no {gone}"
    assert dotted_problem(f"ray_rthpo.optim.settings.{gone}") is not None
    assert dotted_problem("ray_rthpo.optim.rthpo.RTHPO.step") is None
    assert dotted_problem(f"ray_rthpo.optim.rthpo.RTHPO.{gone}") is not None
