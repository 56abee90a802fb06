"""Prometheus metrics, one registry per app so several apps can live in one process."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["Metrics"]


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.http_requests = Counter(
            "edgefleet_http_requests_total",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        # Refused before the app ran (``api.limits``): no route, so not in http_requests.
        self.http_requests_refused = Counter(
            "edgefleet_http_requests_refused_total",
            "HTTP requests refused before their route ran, by reason (too_large, too_slow,"
            " bad_content_length, unauthorized, forbidden).",
            ["reason"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "edgefleet_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["route"],
            registry=self.registry,
        )
        self.converter_jobs = Counter(
            "edgefleet_converter_jobs_total",
            "Converter jobs by command and outcome (ok, refused, failed).",
            ["command", "outcome"],
            registry=self.registry,
        )
        self.model_versions = Counter(
            "edgefleet_model_versions_total",
            "Model versions registered, by origin and status.",
            ["origin", "status"],
            registry=self.registry,
        )
