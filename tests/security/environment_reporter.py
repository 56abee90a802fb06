"""Run as a sandboxed or job child in place of the real worker: print the environment.

Used by ``test_child_process_environment``; it is started by the real bootstrap, with
the real limits and flags, so what it prints is what a model's parser would see.
"""

from __future__ import annotations

import json
import os
import sys

if __name__ == "__main__":
    sys.stdout.write(json.dumps(dict(os.environ)))
