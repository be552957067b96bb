"""Reading and writing the pipeline's files.

Reading: every reader names the file in what it raises (:class:`InputFileError`), so a missing,
truncated or foreign input ends a stage with ``error: <file>: <what is wrong>`` instead of a traceback
from deep inside a parser.

Writing: pipeline stages are killed (time limits, pre-emption, Ctrl-C) and workflow managers judge a job
by whether its output files exist, so an output must either be complete or absent. Everything here
writes to a temporary file next to the target (same folder, hence same filesystem, so the final
``os.replace`` is an atomic rename) and renames it over the target only after the writer returned
without error.
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InputFileError

__all__ = [
    "InputFileError",
    "read_json",
    "read_npz",
    "read_parquet_frame",
    "read_torch",
    "require_file",
    "atomic_path",
    "written_count",
    "written_paths",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_torch_save",
    "atomic_savez",
    "json_safe",
]

# A fixed member time for zip archives (.npz): the zip default is the wall clock, which makes two
# identical saves differ and every downstream job look out of date to DVC.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# Targets written by this process, for the line a stage ends with (written_paths).
_WRITTEN: list[Path] = []


def _reason(err: BaseException) -> str:
    # The parser's first line, when it is short enough to help (torch's are paragraphs of advice).
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}" if 0 < len(first) <= 160 else type(err).__name__


def require_file(path: str | os.PathLike[str], hint: str = "") -> Path:
    """``Path(path)`` if it is a file; else :class:`InputFileError` ("not found", plus ``hint``, e.g.
    which step writes it)."""
    file = Path(path)
    if not file.is_file():
        raise InputFileError(file, "not found" + (f" ({hint})" if hint else ""))
    return file


def _check_keys(file: Path, found: Any, keys: tuple[str, ...], kind: str) -> None:
    missing = [key for key in keys if key not in found]
    if missing:
        raise InputFileError(file, f"{kind} lacks {', '.join(missing)}")


def read_json(path: str | os.PathLike[str], *, hint: str = "", keys: tuple[str, ...] = ()) -> Any:
    """The JSON document in ``path``; with ``keys``, it must be an object holding each of them."""
    file = require_file(path, hint)
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputFileError(file, f"not valid JSON ({_reason(err)})") from None
    if keys:
        if not isinstance(doc, dict):
            raise InputFileError(file, f"expected a JSON object, found {type(doc).__name__}")
        _check_keys(file, doc, keys, "the JSON object")
    return doc


def read_torch(
    path: str | os.PathLike[str], *, hint: str = "", keys: tuple[str, ...] = (), map_location: Any = "cpu"
) -> Any:
    """``torch.load(path, weights_only=True)``; with ``keys``, a dict holding each of them."""
    import torch

    file = require_file(path, hint)
    try:
        obj = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle, zip and stream errors of a damaged or foreign file; named below
        raise InputFileError(file, f"not a readable PyTorch file ({_reason(err)})") from err
    if keys:
        if not isinstance(obj, dict):
            raise InputFileError(file, f"expected a dict, found {type(obj).__name__}")
        _check_keys(file, obj, keys, "the saved dict")
    return obj


def read_npz(path: str | os.PathLike[str], *, hint: str = "", keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every array of the ``.npz`` archive in ``path`` (no pickles), which must hold ``keys``."""
    import numpy as np

    file = require_file(path, hint)
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InputFileError(file, f"not a readable .npz archive ({_reason(err)})") from None
    _check_keys(file, arrays, keys, "the archive")
    return arrays


def read_parquet_frame(path: str | os.PathLike[str], *, hint: str = "", columns: tuple[str, ...] = ()):
    """The table in ``path`` as a pandas DataFrame, which must have ``columns``."""
    import pandas as pd
    import pyarrow as pa

    file = require_file(path, hint)
    try:
        frame = pd.read_parquet(file)
    except (OSError, pa.ArrowException) as err:
        raise InputFileError(file, f"not a readable Parquet table ({_reason(err)})") from None
    _check_keys(file, frame.columns, columns, "the table")
    return frame


def _temp_sibling(path: Path) -> Path:
    # The temp name keeps the target's suffix because some writers choose a format from it (PIL) or
    # append one when it is missing (numpy.save); the leading dot keeps it out of globs like "*.png".
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    return path.with_name(f".{path.stem}.{token}.tmp{path.suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``path``, on error it is removed.

    Parent folders of ``path`` are created.  The temporary file is not created in advance, so the body
    must create it; a body that writes nothing raises ``FileNotFoundError`` naming the temporary path.

    >>> with atomic_path("out/result.npy") as tmp:   # doctest: +SKIP
    ...     np.save(tmp, array)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(target)
    try:
        yield tmp
        # On disk before the rename: after a crash the target is the old file or the new one, never empty.
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _WRITTEN.append(target)
    except BaseException:
        # BaseException so that KeyboardInterrupt / SystemExit also clean up the partial file.
        tmp.unlink(missing_ok=True)
        raise


def written_count() -> int:
    """How many writes :func:`atomic_path` has completed in this process (a mark for
    :func:`written_paths`)."""
    return len(_WRITTEN)


def written_paths(since: int = 0) -> list[Path]:
    """Every file this process wrote through :func:`atomic_path` (after the mark ``since``) that still
    exists, in order, once each (a stage's resumable checkpoint, deleted when it finishes, drops out)."""
    seen: dict[Path, None] = {}
    for path in _WRITTEN[since:]:
        if path.exists():
            seen.setdefault(path, None)
    return list(seen)


def atomic_write(path: str | os.PathLike[str], write_fn: Callable[[Path], Any]) -> Path:
    """Call ``write_fn(tmp_path)`` and atomically move the result to ``path``; return ``Path(path)``."""
    with atomic_path(path) as tmp:
        write_fn(tmp)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` to ``path``, flushed to disk before the rename."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path``, atomically and byte-for-byte reproducibly.

    ``torch.save`` to a file names the archive's top folder after the file, so saving through a random
    temporary name gives a different file each time; saved to a buffer the folder is always "archive".
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_savez(path: str | os.PathLike[str], **arrays: Any) -> Path:
    """``numpy.savez`` (uncompressed, loadable with ``numpy.load``) to ``path``, atomically and with fixed
    member times, so that the same arrays always give the same bytes."""
    import numpy as np

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            archive.writestr(info, member.getvalue())
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths turn up in metrics and manifests; convert them instead of failing.
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by None, recursively: JSON has no NaN, and
    ``json.dumps`` would write the literal ``NaN``, which strict parsers (and DVC's metrics) reject."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(value) for value in obj]
    return obj


def atomic_write_json(
    obj: Any, path: str | os.PathLike[str], *, indent: int = 2, sort_keys: bool = True
) -> Path:
    """Atomically write ``obj`` as JSON (sorted keys by default, trailing newline) to ``path``.

    numpy scalars and arrays are converted with ``.tolist()`` and paths with ``os.fspath``; non-finite
    numbers become ``null`` (:func:`json_safe`).  Keys are sorted so that the same content always gives
    the same bytes, which keeps DVC/Snakemake checksums stable.
    """
    plain = json.loads(json.dumps(obj, default=_json_default))  # numpy values become Python floats first
    text = json.dumps(
        json_safe(plain), indent=indent, sort_keys=sort_keys, ensure_ascii=False, allow_nan=False
    )
    return atomic_write_text(path, text + "\n")
