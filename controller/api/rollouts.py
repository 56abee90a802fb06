"""Rollouts: create, inspect, and steer (pause, resume, abort, promote)."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["rollouts"])
