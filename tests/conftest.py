"""Suite-wide settings: no network checks, generated data cached in a per-session temporary folder."""

import os
import tempfile

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["CONCEPTFIX_CACHE"] = tempfile.mkdtemp(prefix="conceptfix-test-cache-")
