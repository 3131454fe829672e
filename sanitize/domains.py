"""Parameter domains shared by every command, so one option is checked the same way everywhere.

Click checks a range before the command runs, and reports a value outside it as a usage error
(one line, exit 2).
"""

from __future__ import annotations

# What numpy's and torch's generators both accept as a seed; -1 and 2**64 are refused up front.
SEED_RANGE = {"min": 0, "max": 2**63 - 1}
