"""Placeholder: ``edgefleet model import`` (issue 18)."""

from __future__ import annotations
