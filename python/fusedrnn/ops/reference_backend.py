"""The reference backend's entry points for ``fusedrnn.backends`` (any device)."""

from __future__ import annotations

import torch

from .reference import recurrence_ref as recurrence  # noqa: F401  (the backend's op)


def unavailable() -> str | None:
    return None


def supports(device: torch.device) -> bool:
    return True
