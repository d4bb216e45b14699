"""Suite-wide test settings: quiet tracking, few threads (CI has 2 cores), shared small fixtures."""

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("ARSR_NO_PROGRESS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def repo_root():
    from common.config import REPO_ROOT

    return REPO_ROOT


@pytest.fixture
def one_thread():
    """Tiny matmuls: one intra-op thread is several times faster than two on a loaded 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
