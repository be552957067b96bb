"""Outputs are complete or absent, and the same content always gives the same bytes."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch

from diffusion_curriculum.io import atomic_path, atomic_savez, atomic_torch_save, atomic_write_json


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_torch_and_numpy_archives_are_byte_identical_whatever_the_file_name(tmp_path):
    """torch.save names its archive after the file, numpy.savez stamps the wall clock: neither may leak."""
    record = {"format": 1, "net": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 7}
    atomic_torch_save(record, tmp_path / "a" / "model.pt")
    atomic_torch_save(record, tmp_path / "b" / "other-name.pt")
    assert _sha(tmp_path / "a" / "model.pt") == _sha(tmp_path / "b" / "other-name.pt")
    loaded = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    assert loaded["step"] == 7 and torch.equal(loaded["net"]["w"], record["net"]["w"])

    arrays = {"images": np.arange(12, dtype=np.uint8).reshape(3, 2, 2, 1), "labels": np.array([0, 1, -1])}
    atomic_savez(tmp_path / "s1.npz", **arrays)
    atomic_savez(tmp_path / "s2.npz", **arrays)
    assert _sha(tmp_path / "s1.npz") == _sha(tmp_path / "s2.npz")
    with np.load(tmp_path / "s1.npz") as npz:
        assert sorted(npz.files) == ["images", "labels"] and np.array_equal(npz["labels"], arrays["labels"])


def test_json_has_no_nan_literals(tmp_path):
    atomic_write_json({"loss": math.nan, "ok": 1.5, "list": [math.inf, np.float32(2.0)]}, tmp_path / "m.json")
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"list": [None, 2.0], "loss": None, "ok": 1.5}


def test_a_failed_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
