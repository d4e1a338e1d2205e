"""Where the tests find the real public data sets, and the skip for a clone without them.

Why one place: the data (`../shared/data` beside the repository: SMD, ASD, NAB, ODDS) is
not in the repository. CI has it and runs these tests; a fresh clone does not, and there
`make test` must pass with each such test skipped and the reason printed (`-ra`).
`NIGHTOWL_PUBLIC_DATA` points elsewhere (or at a missing folder, to try the skip).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("NIGHTOWL_PUBLIC_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_data = pytest.mark.skipif(
    not DATA.is_dir(),
    reason=f"public data not found at {DATA} (clone ../shared beside the repository or set "
           "NIGHTOWL_PUBLIC_DATA)")
