"""The code a stage runs: the repository's Python files its module imports, directly or not.

Both drivers rerun a stage when one of these files changes.  The Snakefile's ``code(...)`` calls
:func:`closure` at parse time; ``dvc.yaml`` cannot call Python, so its lists are written out and
``tests/test_codedeps.py`` checks them against the same function.
``python -m diffusion_curriculum.stages._codedeps`` checks them (``--write`` rewrites them).

The closure is read from the source, without importing anything: every ``import`` and
``from … import`` statement counts, at module level or inside a function (a lazily imported module
changes what the stage does as much as any other), relative imports are resolved against the importing
module's package, and importing a module runs its packages' ``__init__.py`` first.  Only this
repository's package is followed (the stages are its subpackage); third-party and standard-library
imports are not code of the pipeline.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from pathlib import Path

# Top-level package -> its folder, relative to the repository root.
PACKAGES = {"diffusion_curriculum": "src/diffusion_curriculum"}
# The package of the stage CLIs: ``python -m diffusion_curriculum.stages.<name>``.
STAGES_PACKAGE = "diffusion_curriculum.stages"


def _module_file(root: Path, module: str) -> Path | None:
    """The file that defines ``module`` (dotted), or None when it is not part of the repository."""
    top, *rest = module.split(".")
    if top not in PACKAGES:
        return None
    base = root / PACKAGES[top]
    path = base.joinpath(*rest)
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if rest and path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _with_parents(module: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module imports its packages first."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _imported_modules(module: str, path: Path, root: Path) -> set[str]:
    """Every repository module that the source of ``module`` (at ``path``) may import."""
    stat = path.stat()
    return {m for m in _imports(module, str(path), stat.st_mtime_ns, stat.st_size) if _module_file(root, m)}


@functools.cache
def _imports(module: str, path: str, mtime_ns: int, size: int) -> frozenset[str]:
    """The modules (and module-or-attribute names) the source at ``path`` names in its imports; cached by
    the file's modification time and size, since every rule of the Snakefile asks for its closure."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)
    package = module if _is_package(Path(path)) else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(_with_parents(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                if node.level - 1 >= len(anchor):
                    raise ImportError(f"{path}: relative import beyond the top-level package")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.update(_with_parents(base))
            # ``from pkg import name``: name is a submodule when a file defines it, else an attribute.
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return frozenset(found)


def closure(module: str, root: str | Path = ".") -> list[str]:
    """The repository files ``python -m <module>`` runs, as sorted POSIX paths relative to ``root``.

    ``module`` is dotted (``diffusion_curriculum.stages.train``); the result holds its own file, every
    repository module it imports directly or through others, and the ``__init__.py`` of every package on
    the way.
    """
    root = Path(root)
    if _module_file(root, module) is None:
        raise ModuleNotFoundError(f"{module} is not a module of this repository (under {root.resolve()})")
    seen: set[str] = set()
    todo = _with_parents(module)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(root, name)
        todo.extend(sorted(_imported_modules(name, path, root) - seen))
    return sorted(_module_file(root, name).relative_to(root).as_posix() for name in seen)


def stage_closure(stage: str, root: str | Path = ".") -> list[str]:
    """The code files of the stage CLI ``python -m diffusion_curriculum.stages.<stage>``."""
    return closure(f"{STAGES_PACKAGE}.{stage}", root)


CODE_FILE = re.compile(r"^(?:" + "|".join(re.escape(p) for p in PACKAGES.values()) + r")/.*\.py$")


def is_code_file(path: str) -> bool:
    """Whether a dependency path names a Python file of the repository (rather than data)."""
    return bool(CODE_FILE.match(path))


STAGE_COMMAND = re.compile(r"python -m " + re.escape(STAGES_PACKAGE) + r"\.(\w+)")


def dvc_code_deps(dvc_yaml: str | Path = "dvc.yaml") -> dict[str, tuple[str, list[str]]]:
    """Stage name -> (the stage module its command runs, the code files it lists in ``deps:``)."""
    import yaml

    stages = yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8"))["stages"]
    found = {}
    for name, stage in stages.items():
        match = STAGE_COMMAND.search(stage["cmd"])
        if match is None:
            raise ValueError(f"{dvc_yaml}: stage {name} runs no 'python -m {STAGES_PACKAGE}.<name>' command")
        found[name] = (match.group(1), [d for d in stage.get("deps", []) if is_code_file(d)])
    return found


def dvc_drift(root: str | Path = ".") -> dict[str, tuple[list[str], list[str]]]:
    """Stage name -> (code files ``dvc.yaml`` misses, files it lists that the stage does not import),
    for every stage whose list differs from its import closure."""
    root = Path(root)
    drift = {}
    for name, (module, listed) in dvc_code_deps(root / "dvc.yaml").items():
        expected = stage_closure(module, root)
        missing = [p for p in expected if p not in listed]
        extra = [p for p in listed if p not in expected]
        if missing or extra or listed != expected:
            drift[name] = (missing, extra)
    return drift


def rewrite_dvc_yaml(root: str | Path = ".") -> bool:
    """Replace the code files in every ``deps:`` list of ``dvc.yaml`` with the stage's import closure
    (after its data deps, leaving every other line as it is); True if the file changed."""
    root = Path(root)
    path = root / "dvc.yaml"
    modules = dvc_code_deps(path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    out: list[str] = []
    stage = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if match := re.match(r"^  (\w+):\s*$", line):
            stage = match.group(1)
        out.append(line)
        i += 1
        if stage in modules and re.match(r"^    deps:\s*$", line):
            items = []
            while i < len(lines) and (item := re.match(r"^      - (\S+)\s*$", lines[i])):
                items.append(item.group(1))
                i += 1
            kept = [d for d in items if not is_code_file(d)]
            out.extend(f"      - {d}\n" for d in kept + stage_closure(modules[stage][0], root))
    text = "".join(out)
    changed = text != path.read_text(encoding="utf-8")
    if changed:
        path.write_text(text, encoding="utf-8")
    return changed


def main(argv: list[str]) -> int:
    """Check dvc.yaml's code deps (``--write``: rewrite them from the imports)."""
    if argv not in ([], ["--write"]):
        print(f"usage: python -m {STAGES_PACKAGE}._codedeps [--write]", file=sys.stderr)
        return 2
    if argv == ["--write"]:
        print("dvc.yaml " + ("rewritten" if rewrite_dvc_yaml(".") else "already current"))
        return 0
    drift = dvc_drift(".")
    for name, (missing, extra) in drift.items():
        print(f"{name}: missing {missing or 'nothing'}, not imported {extra or 'nothing'}")
    if drift:
        print(f"rewrite them with: python -m {STAGES_PACKAGE}._codedeps --write")
        return 1
    print("dvc.yaml: every stage lists exactly the code it imports")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
