"""What every stage CLI shares: argument parsing conventions, the thread budget, and turning the user's
errors (bad parameters, bad input files, a diverged run) into one line."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from diffusion_curriculum.errors import InputFileError, SettingError, TrainingDiverged

from .params import ParamsError

# Variables read by the OpenMP / BLAS runtimes when they start: children (torchrun's workers) inherit them.
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# The stage CLIs are the modules of this package: ``python -m diffusion_curriculum.stages.<name>``.
PACKAGE = __package__


def parser(stage: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of ``stage``, with the options every stage takes; ``--help`` shows the command
    that runs it and the module's docstring as written."""
    ap = argparse.ArgumentParser(
        prog=f"python -m {PACKAGE}.{stage}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads this job may use (the driver's grant, e.g. Snakemake's {threads}); "
        "0 (default): the runtimes' own choice, every core",
    )
    return ap


def use_threads(threads: int) -> None:
    """Hold this process (and the processes it starts) to ``threads`` CPU threads.

    Two jobs that each take every core run about 4x slower than two one-thread jobs on a 2-core machine
    (BENCHMARKS.md, "Threads per job"), so a job uses exactly what its driver grants it: PyTorch's
    intra-op pool, the BLAS pools that NumPy / SciPy already loaded, and the environment that children
    inherit.  Inter-op parallelism stays at one thread: no stage runs independent graph branches.
    """
    if threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: every core), got {threads}")
    if threads == 0:
        return
    for var in _THREAD_VARS:
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # already fixed by earlier parallel work in this process
            torch.set_num_interop_threads(1)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)


# Failures of the user's parameters, settings, files or run: one line naming the key or file, exit
# status 2.  Anything else (a ValueError from a bug included) keeps its traceback.
USER_ERRORS = (ParamsError, SettingError, InputFileError, FileNotFoundError, TrainingDiverged)


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a stage; a bad parameter or input file, or a diverged run, ends it with one clear line and exit
    status 2."""
    from diffusion_curriculum.io import written_count

    mark = written_count()
    try:
        budget = argparse.ArgumentParser(add_help=False)
        budget.add_argument("--threads", type=int, default=0)
        use_threads(budget.parse_known_args(argv)[0].threads)
        main(argv)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    _report_written(main, mark)


def _report_written(main: Callable, mark: int) -> None:
    # Every stage ends its log with the files it wrote, relative to where it ran.
    from diffusion_curriculum.io import written_paths

    here = Path.cwd()
    paths = [str(p.relative_to(here)) if p.is_relative_to(here) else str(p) for p in written_paths(mark)]
    module = sys.modules.get(getattr(main, "__module__", ""))
    spec = getattr(module, "__spec__", None)  # run with `python -m`, the module is __main__
    stage = (spec.name if spec else getattr(main, "__module__", "stage")).rsplit(".", 1)[-1]
    # On stderr, so that a command printing its result (compose) keeps stdout clean.
    sys.stdout.flush()
    print(f"{stage} wrote {len(paths)} file(s): {', '.join(paths) if paths else 'none'}", file=sys.stderr)
