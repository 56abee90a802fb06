"""Watch a newly activated model's live statistics until the probation judge decides.

The judge is pure (``agent.stats.probation``); this is the loop around it: every check
interval it hands the judge the new version's cumulative statistics since activation
and the previous version's as the baseline, until the verdict is final.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from protocol import ProbationPolicy

from .probation import ProbationJudge, ProbationOutcome, ProbationVerdict
from .recorder import StatsRecorder

__all__ = ["watch_probation"]

logger = logging.getLogger(__name__)

MAX_CHECK_INTERVAL_S = 1.0


async def watch_probation(
    policy: ProbationPolicy,
    candidate: StatsRecorder,
    baseline: StatsRecorder | None,
    *,
    monotonic: Callable[[], float] = time.monotonic,
) -> ProbationVerdict:
    now = monotonic()
    judge = ProbationJudge(policy, baseline.cumulative(now) if baseline else None)
    started = now
    interval_s = min(MAX_CHECK_INTERVAL_S, policy.window_s / 10)
    while True:
        await asyncio.sleep(interval_s)
        now = monotonic()
        verdict = judge.judge(candidate.cumulative(now), elapsed_s=now - started)
        if verdict.outcome is not ProbationOutcome.CONTINUE:
            logger.info("probation: %s (%s)", verdict.outcome, verdict.message)
            return verdict
