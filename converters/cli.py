"""``python -m converters``: the command line the controller runs as a subprocess job.

Exit codes: 0 with one JSON object on stdout; 3 with ``{"error", "kind"}`` on stdout when
the model, the data or the conversion is refused; anything else means the job crashed.
Logs go to stderr. Converters and runtimes print to stdout at will (LiteRT Quantizer
does), so file descriptor 1 points at stderr while a command runs and stdout carries the
JSON object alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tensors import write_check_bundle

from .errors import ConversionError
from .evaluate import evaluate
from .gate import (
    DEFAULT_MAX_ACCURACY_DROP_POINTS,
    DEFAULT_MAX_LATENCY_RATIO,
    DEFAULT_MIN_TOP1_AGREEMENT,
    GatePolicy,
)
from .inspection import inspect_model
from .onnx_checks import DEFAULT_MAX_TENSOR_BYTES
from .profile import profile_model
from .variants import MODES, make_variant

__all__ = ["EXIT_CRASHED", "EXIT_OK", "EXIT_REFUSED", "main"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CRASHED = 1
EXIT_REFUSED = 3
MAX_TENSOR_BYTES_ENV = "EDGEFLEET_MAX_TENSOR_BYTES"
LOG_LEVEL_ENV = "EDGEFLEET_LOG_LEVEL"


def _run_inspect(args: argparse.Namespace) -> dict[str, Any]:
    return inspect_model(args.model, max_tensor_bytes=args.max_tensor_bytes).to_json_obj()


def _run_variant(args: argparse.Namespace) -> dict[str, Any]:
    policy = GatePolicy(
        max_accuracy_drop_points=args.max_accuracy_drop_points,
        min_top1_agreement=args.min_top1_agreement,
        max_latency_ratio=args.max_latency_ratio if args.max_latency_ratio > 0 else None,
        max_abs_error=args.max_abs_error,
    )
    result = make_variant(
        args.mode,
        args.parent,
        args.output,
        args.validation,
        policy=policy,
        seed=args.seed,
        max_tensor_bytes=args.max_tensor_bytes,
    )
    return result.to_json_obj()


def _run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    report = evaluate(
        args.parent,
        args.candidate,
        args.validation,
        seed=args.seed,
        max_tensor_bytes=args.max_tensor_bytes,
    )
    return report.to_json_obj()


def _run_profile(args: argparse.Namespace) -> dict[str, Any]:
    profile = profile_model(
        args.model,
        args.validation,
        golden_count=args.golden_count,
        seed=args.seed,
        max_tensor_bytes=args.max_tensor_bytes,
    )
    with args.bundle_out.open("wb") as handle:
        write_check_bundle(profile.bundle, handle)
    return profile.summary()


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--max-tensor-bytes",
        type=int,
        default=int(os.environ.get(MAX_TENSOR_BYTES_ENV, DEFAULT_MAX_TENSOR_BYTES)),
        help=f"refuse declared tensors above this size (env {MAX_TENSOR_BYTES_ENV})",
    )
    common.add_argument("--seed", type=int, default=0, help="seed of generated inputs")
    parser = argparse.ArgumentParser(prog="python -m converters", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", parents=[common], help="check and describe a model")
    inspect.add_argument("model", type=Path)
    inspect.set_defaults(run=_run_inspect)

    variant = commands.add_parser("variant", parents=[common], help="derive and gate a variant")
    variant.add_argument("--mode", required=True, choices=MODES)
    variant.add_argument("--parent", required=True, type=Path)
    variant.add_argument("--output", required=True, type=Path)
    variant.add_argument("--validation", type=Path)
    variant.add_argument(
        "--max-accuracy-drop-points", type=float, default=DEFAULT_MAX_ACCURACY_DROP_POINTS
    )
    variant.add_argument("--min-top1-agreement", type=float, default=DEFAULT_MIN_TOP1_AGREEMENT)
    variant.add_argument("--max-abs-error", type=float)
    variant.add_argument(
        "--max-latency-ratio",
        type=float,
        default=DEFAULT_MAX_LATENCY_RATIO,
        help="reject a variant slower than this times its parent (0: do not gate latency)",
    )
    variant.set_defaults(run=_run_variant)

    evaluation = commands.add_parser("evaluate", parents=[common], help="compare two models")
    evaluation.add_argument("--parent", required=True, type=Path)
    evaluation.add_argument("--candidate", required=True, type=Path)
    evaluation.add_argument("--validation", type=Path)
    evaluation.set_defaults(run=_run_evaluate)

    profile = commands.add_parser("profile", parents=[common], help="golden cases and profile")
    profile.add_argument("--model", required=True, type=Path)
    profile.add_argument("--validation", type=Path)
    profile.add_argument("--golden-count", type=int, default=4)
    profile.add_argument(
        "--bundle-out", required=True, type=Path, help="where to write the check bundle (.npz)"
    )
    profile.set_defaults(run=_run_profile)
    return parser


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Point fd 1 at stderr for the block, so only our JSON reaches the real stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get(LOG_LEVEL_ENV, "WARNING").upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run: Callable[[argparse.Namespace], dict[str, Any]] = args.run
    try:
        with _stdout_to_stderr():
            result = run(args)
    except ConversionError as exc:
        logger.warning("refused (%s): %s", exc.kind, exc)
        result, code = exc.to_json_obj(), EXIT_REFUSED
    except Exception:  # the job's top level: any other failure is a crash, logged whole
        logger.exception("%s crashed", args.command)
        return EXIT_CRASHED
    else:
        code = EXIT_OK
    sys.stdout.write(json.dumps(_finite(result), allow_nan=False) + "\n")
    sys.stdout.flush()
    return code
