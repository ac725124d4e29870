import os
import tempfile

# Every test run compiles into its own cache, so cache tests start cold and runs never share.
os.environ.setdefault("GRAPHC_CACHE_DIR", tempfile.mkdtemp(prefix="graphc-test-cache-"))
# Every pass's graph is checked (ir/verify.py): a pass that breaks an invariant fails loudly.
os.environ.setdefault("GRAPHC_VERIFY", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
