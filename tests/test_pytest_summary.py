"""The suite's own report: without Redis, the skipped Redis tests are one line, not one per test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_tests_skipped_without_redis_are_summed_up_in_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CI"}  # under CI=true a missing Redis fails instead
    env["PENNY_TEST_REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_redis_store.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    skipped = [line for line in run.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1, skipped
    assert skipped[0].startswith("SKIPPED [") and "PENNY_TEST_REDIS_URL" in skipped[0]
    assert " skipped" in run.stdout.splitlines()[-1]
