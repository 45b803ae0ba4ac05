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


# The fast loop for development is `pytest -m "not slow"`: these modules run whole pipelines through
# subprocesses (DVC stories, the user CLI, Ray, S3) and take most of the suite's time; CI runs them all.
SLOW_MODULES = {"test_dvc_stories.py", "test_user_cli.py", "test_ray_engine.py", "test_s3_stores.py",
                "test_real_time.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API server (moto) on loopback, with a bucket `affcache`; never a cloud endpoint.

    Yields `{"endpoint": url, "bucket": name, "env": {...AWS_* variables...}, "storage_options": {...}}`:
    the variables are what boto3, s3fs and DVC read, so code under test gets no special arguments
    beyond the endpoint.
    """
    import socket

    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (the test extra)")
    boto3 = pytest.importorskip("boto3", reason="boto3 is not installed (the test extra)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    bucket = "affcache"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    try:
        yield {"endpoint": endpoint, "bucket": bucket, "env": env,
               "storage_options": {"client_kwargs": {"endpoint_url": endpoint}}}
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
