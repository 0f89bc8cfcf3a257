"""The code each DVC stage runs: its import closure within the project, found statically.

One source for three things that must agree: the code deps of the DVC stages (so that ``dvc repro``
reruns a stage whenever any code it imports changes, not just the files someone remembered to list),
the code hash in checkpoint names (so that a checkpoint never resumes under other code), and the code
part of the sweep and tune identities. The closure follows ``import``/``from`` statements anywhere in a
file (function bodies included) with ``ast``, so nothing is imported and no heavy dependency is needed.

In dvc.yaml a stage's code dep is one small file, ``code/<stage>.sha256``: its closure, one line per
file with the file's hash, written by the stage ``code`` (``python -m pipeline.deps --stamp``, which
depends on the directories ttfs/, pipeline/ and stages/ and runs in about a second whenever any code
changes). A stamp changes exactly when a file of the stage's closure changes, so ``dvc repro`` reruns
exactly the stages whose code changed, as with one dep per file, while ``dvc exp show`` gets one
column per stage instead of one per source file (README "Looking at results").

    python -m pipeline.deps finetune     # the files `finetune` depends on, and their hash
    python -m pipeline.deps --stamp      # write code/<stage>.sha256 for every stage (the `code` stage)
    python -m pipeline.deps --check      # exit 1, naming what dvc.yaml's code deps get wrong
    python -m pipeline.deps --write      # rewrite those entries in dvc.yaml (comments and layout kept)
"""

from __future__ import annotations

import ast
import hashlib
import re
import sys
from pathlib import Path

import yaml

#: The repository root of the code that is running (not the working directory).
ROOT = Path(__file__).resolve().parents[1]
#: Top-level directories whose files are code deps; every other dvc.yaml dep (data, models) is kept as is.
CODE_DIRS = ("ttfs", "pipeline", "stages")
#: Non-Python files read as code, inside the directory of an imported package.
DATA_PATTERNS = ("*.j2", "*.jinja", "templates/**/*")
#: The DVC stage that writes the stamps, and where they go (git-tracked, ``cache: false``).
CODE_STAGE = "code"
STAMP_DIR = "code"


def _module_file(name: str, root: Path) -> Path | None:
    """The project file module ``name`` is loaded from, or None when it is not the project's."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Every module ``path`` (module ``module``) may import, with relative imports made absolute.
    ``from a import b`` yields a and a.b (b may be a submodule); unresolvable names are dropped later."""
    tree = ast.parse(path.read_bytes(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def closure(stage: str, root: Path | None = None) -> list[str]:
    """Sorted repo-relative paths of ``stages/<stage>.py`` and every project file it imports transitively,
    including the ``__init__.py`` of each package on the way (importing a.b runs a/__init__.py) and the
    templates inside imported packages."""
    root = root or ROOT
    if _module_file(f"stages.{stage}", root) is None:
        raise ValueError(f"no stage module stages/{stage}.py under {root}")
    todo, seen, files = [f"stages.{stage}"], set(), set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # the module and its parent packages
            sub = ".".join(parts[:i])
            if sub in seen:
                continue
            seen.add(sub)
            path = _module_file(sub, root)
            if path is None:
                continue
            files.add(path)
            if path.name == "__init__.py":
                for pattern in DATA_PATTERNS:
                    files.update(p for p in path.parent.glob(pattern) if p.is_file() and "__pycache__" not in p.parts)
            todo.extend(_imports(path, sub))
    return sorted(p.relative_to(root).as_posix() for p in files)


def code_hash(stage: str, root: Path | None = None) -> str:
    """16 hex digits of sha256 over the names and contents of :func:`closure`: the code identity of a
    stage's results, used in checkpoint names and study/sweep keys."""
    root = root or ROOT
    h = hashlib.sha256()
    for name in closure(stage, root):
        h.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def stamp_path(stage: str) -> str:
    """The repo-relative stamp of ``stage``: its one code dep in dvc.yaml."""
    return f"{STAMP_DIR}/{stage}.sha256"


def stamp(stage: str, root: Path | None = None) -> str:
    """The text of ``code/<stage>.sha256``: the closure, each file with 16 hex digits of its sha256, and
    the code hash. Deterministic; it changes exactly when a file of the closure (or the closure) does."""
    root = root or ROOT
    lines = [f"# stage {stage}: the code it runs (python -m pipeline.deps {stage}), written by the `code` stage",
             f"code_hash {code_hash(stage, root)}"]
    lines += [f"{hashlib.sha256((root / name).read_bytes()).hexdigest()[:16]}  {name}" for name in closure(stage, root)]
    return "\n".join(lines) + "\n"


def write_stamps(stages: list[str], root: Path | None = None) -> list[Path]:
    """Write the stamp of every stage in ``stages`` (unchanged bytes are not rewritten); their paths."""
    root = root or ROOT
    paths = []
    for stage in stages:
        path = root / stamp_path(stage)
        text = stamp(stage, root)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        paths.append(path)
    return paths


# -- dvc.yaml ----------------------------------------------------------------------------------------


def is_code(dep: str) -> bool:
    """A code dep: a file or directory of the code, or a stamp."""
    return dep.split("/", 1)[0] in (*CODE_DIRS, STAMP_DIR)


def _stages(dvc_yaml: Path) -> dict[str, dict]:
    """Stage name -> its body as written in dvc.yaml (``foreach`` stages: that of ``do``)."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {name: spec.get("do", spec) for name, spec in stages.items()}


def _declared(dvc_yaml: Path) -> dict[str, list[str]]:
    """Stage name -> its deps as written in dvc.yaml (``foreach`` stages: those of ``do``)."""
    return {name: body.get("deps") or [] for name, body in _stages(dvc_yaml).items()}


def pipeline_stages(dvc_yaml: Path) -> list[str]:
    """The stages whose code is stamped: every stage of dvc.yaml but ``code`` itself."""
    return [name for name in _stages(dvc_yaml) if name != CODE_STAGE]


def wanted(stage: str) -> list[str]:
    """The code deps dvc.yaml must list for ``stage``: the code directories for ``code``, else its stamp."""
    return list(CODE_DIRS) if stage == CODE_STAGE else [stamp_path(stage)]


def problems(dvc_yaml: Path, root: Path | None = None) -> list[str]:
    """One line per stage whose code deps in dvc.yaml are not its stamp (``code``: not the code
    directories, or outputs other than every stage's stamp); empty when they agree."""
    out = []
    stages = _stages(dvc_yaml)
    if CODE_STAGE not in stages:
        out.append(f"{CODE_STAGE}: no such stage (it writes the stamps: python -m pipeline.deps --stamp)")
    for stage, body in stages.items():
        if stage != CODE_STAGE and _module_file(f"stages.{stage}", root or ROOT) is None:
            out.append(f"{stage}: no stages/{stage}.py")
            continue
        need, have = set(wanted(stage)), {d for d in body.get("deps") or [] if is_code(d)}
        if need - have:
            out.append(f"{stage}: missing {', '.join(sorted(need - have))}")
        if have - need:
            out.append(f"{stage}: not a code dep of this layout (stale) {', '.join(sorted(have - need))}")
    if CODE_STAGE in stages:
        outs = {next(iter(o)) if isinstance(o, dict) else o for o in stages[CODE_STAGE].get("outs") or []}
        need = {stamp_path(s) for s in stages if s != CODE_STAGE}
        if need - outs:
            out.append(f"{CODE_STAGE}: outs miss {', '.join(sorted(need - outs))}")
        if outs - need:
            out.append(f"{CODE_STAGE}: outs that are no stage's stamp {', '.join(sorted(outs - need))}")
    return out


_STAGE = re.compile(r"^  (\w[\w-]*):\s*(#.*)?$")
_DEPS = re.compile(r"^(\s+)deps:\s*(#.*)?$")
_ITEM = re.compile(r"^(\s+)(?:- ([^#\s]+)|#)")  # a list item, or a comment line among them


def rewrite(text: str, root: Path | None = None) -> str:
    """dvc.yaml's text with each stage's code deps replaced by :func:`wanted` (its stamp; ``code``: the
    code directories), first; other deps (data, models, directories) keep their lines, comments
    included. A textual edit: YAML libraries renumber or drop the comments attached to list items."""
    lines, out, stage, i = text.splitlines(keepends=True), [], None, 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if m := _STAGE.match(line):
            stage = m.group(1)
        elif stage and (m := _DEPS.match(line)):
            items = []
            while i < len(lines) and (item := _ITEM.match(lines[i])) and len(item.group(1)) > len(m.group(1)):
                items.append((item.group(2) or "#", lines[i]))
                i += 1
            indent = next((raw[: raw.index("-")] for dep, raw in items if dep != "#"), m.group(1) + "  ")
            out += [f"{indent}- {f}\n" for f in wanted(stage)]
            out += [raw for dep, raw in items if not is_code(dep)]
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    dvc_yaml = ROOT / "dvc.yaml"
    if args == ["--stamp"]:
        for path in write_stamps(pipeline_stages(dvc_yaml)):
            print(f"{path.relative_to(ROOT).as_posix()}: {path.read_text().splitlines()[1]}", file=sys.stderr)
        return 0
    if args == ["--write"]:
        dvc_yaml.write_text(rewrite(dvc_yaml.read_text()))
        args = ["--check"]
    if args == ["--check"]:
        found = problems(dvc_yaml)
        for line in found:
            print(f"dvc.yaml code deps: {line}", file=sys.stderr)
        if found:
            print("fix: python -m pipeline.deps --write", file=sys.stderr)
        return 1 if found else 0
    if len(args) == 1 and not args[0].startswith("-"):
        print("\n".join(closure(args[0])))
        print(f"code hash {code_hash(args[0])}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
