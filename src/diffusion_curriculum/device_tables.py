"""Constant lookup tables kept on every device they are used on."""

from __future__ import annotations

import torch

__all__ = ["DeviceTables"]


class DeviceTables:
    """Constant tensors built once on the CPU and copied to each device at most once.

    Strategies, schedules and loss bins run every step; re-uploading a table each time would cost a
    host-to-device copy from pageable memory, which waits for the GPU queue.
    """

    def __init__(self) -> None:
        self._cpu: dict[str, torch.Tensor] = {}
        self._copies: dict[tuple[str, str, int | None], torch.Tensor] = {}

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self._cpu[name] = tensor.detach().cpu()
        self._copies = {k: v for k, v in self._copies.items() if k[0] != name}

    def get(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, device.type, device.index)
        table = self._copies.get(key)
        if table is None:
            table = self._copies[key] = self._cpu[name].to(device)
        return table
