"""Write a small real model to try edgefleet with: ``python examples/make_digits_model.py DIR``.

Trains a scikit-learn MLP on the digits data set that scikit-learn ships (no download),
exports it to ONNX, and writes ``DIR/digits.onnx`` and ``DIR/digits-validation.npz``
(held-out inputs under ``input`` and their ``labels``). Needs the ``sim`` extra.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The same builder the demo and the tests use, so the documented model is the tested one.
from simulator.demo_models import build_digits_model


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    directory = Path(sys.argv[1])
    directory.mkdir(parents=True, exist_ok=True)
    model, validation = build_digits_model(directory)
    print(f"wrote {model} and {validation}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
