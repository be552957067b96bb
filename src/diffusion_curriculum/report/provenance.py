"""Where a report came from: the code's commit, the params file and its hash, the package versions and
the machine, so a reader can tell two reports apart and rerun the one they hold.

Kept out of every byte-compared output (metrics, tables): it holds the date and the machine.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["PACKAGES", "collect_provenance", "provenance_markdown"]

# The distributions whose versions decide the numbers (and the drivers that ran them).
PACKAGES = (
    "diffusion-curriculum",
    "torch",
    "numpy",
    "scipy",
    "clean-fid",
    "pandas",
    "pyarrow",
    "snakemake",
    "dvc",
)


def _git_commit(folder: Path) -> str | None:
    """HEAD of the repository holding ``folder``, with ``-dirty`` if tracked files differ; None outside
    git (an installed package, a copied folder)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def collect_provenance(
    params_file: str | os.PathLike[str], code_folder: str | os.PathLike[str] = "."
) -> dict:
    """The record: ``commit`` (of the repository holding ``code_folder``), ``date`` (UTC),
    ``params_file`` and its ``params_sha256``, ``python``, ``platform``, ``cpus``, ``gpu`` (CUDA device
    name or None) and ``packages`` (name -> version, None when not installed)."""
    params = Path(params_file)
    gpu = None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {
        "commit": _git_commit(Path(code_folder)),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "params_file": str(params),
        "params_sha256": hashlib.sha256(params.read_bytes()).hexdigest(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "gpu": gpu,
        "packages": {name: _version(name) for name in PACKAGES},
    }


def provenance_markdown(record: dict) -> str:
    """The record as a Markdown bullet list."""
    packages = ", ".join(f"{name} {version}" for name, version in record["packages"].items() if version)
    lines = [
        f"- commit: `{record['commit'] or 'not a git checkout'}`",
        f"- date (UTC): {record['date']}",
        f"- params file: `{record['params_file']}` (SHA-256 `{record['params_sha256'][:16]}…`)",
        f"- Python {record['python']} on {record['platform']}, {record['cpus']} CPUs"
        + (f", GPU {record['gpu']}" if record["gpu"] else ", no GPU"),
        f"- packages: {packages}",
    ]
    return "\n".join(lines)
