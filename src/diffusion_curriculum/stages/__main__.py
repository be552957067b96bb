"""``diffusion-curriculum`` (or ``python -m diffusion_curriculum.stages``): list the pipeline's stages, or
run one.

    diffusion-curriculum                      # every stage, one line each
    diffusion-curriculum <stage> [options]    # the same as python -m diffusion_curriculum.stages.<stage>
    diffusion-curriculum <stage> --help       # the stage's options
    diffusion-curriculum compose PRESET -o params.yaml   # a preset's complete parameters (for DVC)
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

from . import _cli, params

# Modules of this package that are not stages: the stage layer's own helpers.
HELPERS = frozenset({"__main__", "_cli", "_codedeps", "params"})


def stage_names() -> list[str]:
    """Every stage of the pipeline, by name, sorted."""
    found = pkgutil.iter_modules([str(Path(__file__).parent)])
    return sorted(m.name for m in found if m.name not in HELPERS and not m.name.startswith("_"))


def summary(stage: str) -> str:
    """What the stage does: the first paragraph of its docstring without the leading ``Stage <name>:``
    (read from its source, without importing the stage)."""
    origin = importlib.util.find_spec(f"{__package__}.{stage}").origin
    doc = ast.get_docstring(ast.parse(Path(origin).read_text(encoding="utf-8"))) or ""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    return first.split(": ", 1)[1] if first.startswith("Stage ") and ": " in first else first


def listing() -> str:
    width = max(map(len, stage_names()))
    lines = [f"{name:<{width}}  {summary(name)}" for name in stage_names()]
    usage = (
        "usage: diffusion-curriculum <stage> [options]   (<stage> --help: its options)\n"
        "       diffusion-curriculum compose PRESET [-o OUT]   (a preset's complete parameters, for DVC)"
    )
    return "\n".join([usage, "", "stages:", *(f"  {line}" for line in lines)])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(listing())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage == "compose":
        _cli.run(params.compose_main, rest)
        return 0
    if stage not in stage_names():
        print(f"error: no stage {stage!r}\n\n{listing()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__package__}.{stage}")
    _cli.run(module.main, rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
