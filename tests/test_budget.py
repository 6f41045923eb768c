"""The time budget of tests/conftest.py: a test over budget fails naming the budget, the e2e-marked test
has its own, and every run lists its 10 slowest tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_a_test_over_its_budget_fails_and_the_slowest_are_listed(tmp_path: Path):
    conftest = (Path(__file__).parent / "conftest.py").read_text()
    # without the suite's batch-wait fixture: it imports Inspect's hf provider (seconds, charged to the
    # first test), which these sub-second budgets are not about
    conftest, removed = re.subn(r'@pytest.fixture\(scope="session", autouse=True\)\ndef short_hf_batch_wait.*?\n\n\n',
                                "", conftest, flags=re.S)
    assert removed == 1
    conftest = conftest.replace("TEST_BUDGET_S = 60.0", "TEST_BUDGET_S = 0.3").replace("E2E_BUDGET_S = 90.0",
                                                                                        "E2E_BUDGET_S = 1.5")
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_x.py").write_text(
        "import time\nimport pytest\n\n"
        "def test_quick():\n    pass\n\n"
        "def test_slow():\n    time.sleep(0.6)\n\n"
        "@pytest.mark.e2e\ndef test_end_to_end():\n    time.sleep(0.6)\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 1, out
    assert "1 failed, 2 passed" in out
    assert re.search(r"test_x.py::test_slow took 0\.\d s, over the 0.3 s budget of a test", out), out
    assert "10 slowest tests" in out and out.index("test_x.py::test_slow") < out.index("test_x.py::test_quick")
