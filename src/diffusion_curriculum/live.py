"""Live training curves in DVCLive's format, written as plain files while a run trains.

:class:`LiveLog` is an ``on_log`` callback for :func:`diffusion_curriculum.training.train_loop`: each log
row becomes one row of ``<dir>/plots/metrics/<prefix><name>.tsv`` (columns ``step`` and ``<name>``) per
scalar, and ``<dir>/metrics.json`` holds the latest row.  ``dvc plots show`` and the VS Code extension
read these files while the job runs, offline.  They are readings for people, not outputs of the
pipeline: throughput varies from run to run, and no stage declares them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from dvclive import Live

__all__ = ["LiveLog", "PlainFilesLive"]


class PlainFilesLive(Live):
    """``dvclive.Live`` that writes its files and nothing else.

    ``Live`` opens the DVC repository around the working directory when it starts (and runs
    ``dvc init`` in a Git repository that has none), reads the Studio settings from it and may post to
    Studio; ``next_step()`` and ``end()`` may signal VS Code through ``.dvc/tmp`` and add files to Git
    inside ``dvc exp run``.  A training stage runs under Snakemake or ``dvc repro`` inside the
    pipeline's repository, where none of that may happen, so this subclass skips the repository and
    Studio, and :class:`LiveLog` writes rows with ``log_metric`` and ``make_summary`` only.  Use it with
    ``save_dvc_exp=False, dvcyaml=None, report=None`` (as :class:`LiveLog` does)."""

    def _init_dvc(self) -> None:
        self._dvc_file = "dvc.yaml"  # never written: dvcyaml=None

    def _init_studio(self) -> None:
        self._studio_events_to_skip.update(("start", "data", "done"))


def _drop_rows_from(tsv: Path, first: int) -> None:
    """Remove the rows of ``tsv`` whose step is ``first`` or later (and any torn row of a killed job)."""
    lines = tsv.read_text(encoding="utf-8").splitlines()
    if not lines:
        return
    header = lines[0].split("\t")
    column = header.index("step") if "step" in header else None
    kept = [lines[0]]
    for line in lines[1:]:
        fields = line.split("\t")
        if column is None or len(fields) != len(header):
            continue
        try:
            if int(fields[column]) < first:
                kept.append(line)
        except ValueError:
            continue
    if len(kept) < len(lines):
        part = tsv.with_name(f".{tsv.name}.part")
        part.write_text("".join(line + os.linesep for line in kept), encoding="utf-8")
        part.replace(tsv)


class LiveLog:
    """Writes ``train_loop``'s log rows as DVCLive metrics; pass it as ``on_log``.

    Each row's scalars (``loss``, ``stage``, ``lr``, ``beta1``, ``steps_per_s``, ``loss_bin_<i>``) go to
    ``<dir>/plots/metrics/<prefix><name>.tsv`` with the row's training step as DVCLive's step; a
    ``None`` or non-finite value (a loss bin that drew no sample) writes no row.  ``<dir>/metrics.json``
    holds the latest row and its step.

    Resuming: with ``resume=True`` (the default) rows already in ``dir`` are kept up to the step before
    the first row this process writes, and every later one is dropped.  A job killed after its last
    checkpoint has logged rows past it; the resumed run logs those steps again, so each step has one row,
    from the run whose state continued.  A run that starts from step 0 (no checkpoint, another
    configuration) drops every earlier row with its first one.  ``resume=False`` empties ``dir``'s
    DVCLive files at once.

    A stage uses it on rank 0, with a folder outside its declared outputs (the workflow managers delete
    those before a run, which would lose an interrupted attempt's rows) and outside the checkpoint
    folder (deleted when the run completes)::

        live = LiveLog(Path("live") / "train" / method / f"seed{seed}") if rank == 0 else None
        result = train_loop(..., on_log=live)

    and users watch it with ``dvc plots show live/train/<method>/seed<seed>/plots/metrics/train/loss.tsv
    -x step -y loss`` or the DVC extension of VS Code.
    """

    def __init__(self, directory: str | os.PathLike, *, prefix: str = "train/", resume: bool = True):
        self.dir = Path(directory)
        self.prefix = prefix
        self.live = PlainFilesLive(
            str(self.dir), resume=resume, report=None, save_dvc_exp=False, dvcyaml=None
        )
        self._pending_drop = resume

    @property
    def metrics_dir(self) -> Path:
        """The folder of the ``.tsv`` files."""
        return Path(self.live.plots_dir) / "metrics"

    def __call__(self, row: dict) -> None:
        step = int(row["step"])
        if self._pending_drop:
            self._pending_drop = False
            for tsv in sorted(self.metrics_dir.rglob("*.tsv")):
                _drop_rows_from(tsv, step)
        self.live.step = step
        self.live.summary = {}  # metrics.json: this row only
        for name, value in row.items():
            if name == "step" or value is None or not math.isfinite(value):
                continue
            self.live.log_metric(self.prefix + name, value)
        self.live.make_summary()
