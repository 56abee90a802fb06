"""Devices: enrollment tokens, enrollment, and the fleet's devices."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["devices"])
