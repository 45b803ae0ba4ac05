"""Shared test set-up: no hub access, few threads (CI has 2 cores), the shared real data, and the CI
rule that nothing may pass by skipping.

Under CI (`CI=true`, as `.ci/run` runs): a test that skips because something it needs is missing (the
real data in `../shared/realdata`, git, Chromium, an optional package) FAILS instead, with the skip
reason (what is missing) in the failure message. Locally skips stay skips.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
REALDATA = REPO_ROOT.parent / "shared" / "realdata"

# Seconds any `dvc` / `affcache` subprocess of a test may take before it counts as hung.
SUBPROCESS_TIMEOUT = 900


def in_ci() -> bool:
    """`CI` set to a true value (GitHub Actions, GitLab, `.ci/run` all use CI=true)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """In CI a skip (in setup, call or a skipif mark) becomes a failure naming what is missing."""
    outcome = yield
    report = outcome.get_result()
    if not in_ci() or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"CI=true: {item.nodeid} would have been skipped ({reason}); in CI every test must run. "
                       f"Provide what is missing (../shared/realdata beside the repository, git, "
                       f"/usr/bin/chromium via .ci/run, the test extras).")


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The shared real files; tests that need them skip where they are absent (fail under CI)."""
    if not REALDATA.is_dir():
        pytest.skip(f"real data not present at {REALDATA}")
    return REALDATA


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def torch_threads():
    """For a test that changes `torch.set_num_threads`: the count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)
