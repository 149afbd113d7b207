"""Put the repository on ``sys.path``: a benchmark runs as ``python benchmarks/<name>.py`` and
imports what it shares with the cross-service tests from `tests.support` (the platform as
processes), so it imports this module first."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
