"""Where the authors'-code parity fixtures live (``../shared/fixtures`` next to the checkout).

A clean clone elsewhere (CI) still finds them: ``ATTNZOO_FIXTURES`` wins, then the folder next to this
checkout, then the project's shared folder at its usual place, then ``shared/`` inside the checkout.
"""

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
_CANDIDATES = [
    Path(os.environ["ATTNZOO_FIXTURES"]) if os.environ.get("ATTNZOO_FIXTURES") else None,
    _ROOT.parent / "shared" / "fixtures",
    Path("/work/shared/fixtures"),
    _ROOT / "shared" / "fixtures",
]
FIXTURES = next((p for p in _CANDIDATES if p is not None and p.is_dir()), _ROOT.parent / "shared" / "fixtures")
