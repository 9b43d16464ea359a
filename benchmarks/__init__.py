"""By-hand benchmarks of the reports service against baselines: `python -m benchmarks.run`.

Nothing here is part of the test suite; see benchmarks/README.md.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository root: every subprocess runs from here, so `benchmarks` and `seed.py` resolve."""

TOKEN = "bench-token-0123456789"
"""The access token every benchmark server accepts (the service stores its SHA-256)."""
