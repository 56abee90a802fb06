"""Placeholder router, filled in by issue 18's work."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1")
