"""`python -m bench.worker '<spec as JSON>'`: one measured run in a fresh process.

A fresh process per measurement keeps peak host memory and CUDA counters per
implementation and leaves nothing warm (caches, allocator pools) for the next one.
The result is printed as one line starting with RESULT_PREFIX.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `engine` from this checkout

from bench.runners import Spec, run

RESULT_PREFIX = "BENCH-RESULT "

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    measurement = run(Spec(**json.loads(sys.argv[1])))
    print(RESULT_PREFIX + json.dumps(measurement.to_json()), flush=True)
