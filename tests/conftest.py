"""Shared fixtures: an offline Hugging Face hub cache with tiny random weights in each real repo's layout, and tiny
model pairs built once per session.

The environment is set before anything imports huggingface_hub, which reads HF_HUB_OFFLINE at import time: no test
may ever reach a model hub.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


def repo_folder(cache: Path, repo_id: str) -> Path:
    """The cache folder of one hub repo (``models--org--name``)."""
    return Path(cache) / ("models--" + repo_id.replace("/", "--"))


def snapshot_folder(cache: Path, repo_id: str) -> Path:
    """The snapshot that ``refs/main`` points at, i.e. where the repo's files are."""
    repo = repo_folder(cache, repo_id)
    return repo / "snapshots" / (repo / "refs" / "main").read_text().strip()


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache holding tiny random weights for every downloadable registry entry, in the real repo layouts.

    Load from it with ``load_pair(..., cache_dir=hub_cache)``, or point HF_HUB_CACHE at it in a subprocess.
    Treat it as read-only: copy repo folders into your own tmp_path to build partial caches.
    """
    from conceptspace.testing import write_hub_cache

    return write_hub_cache(tmp_path_factory.mktemp("hf-cache"))


@pytest.fixture(scope="session")
def sdxl_only_cache(hub_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache holding the SDXL base but none of its students."""
    cache = tmp_path_factory.mktemp("hf-cache-sdxl-only")
    repo = "models--stabilityai--stable-diffusion-xl-base-1.0"
    shutil.copytree(hub_cache / repo, cache / repo, symlinks=True)  # keeps the relative blob links
    return cache


@pytest.fixture
def empty_cache(tmp_path: Path) -> Path:
    cache = tmp_path / "empty-hf-cache"
    cache.mkdir()
    return cache


@pytest.fixture(scope="session")
def tiny_sdxl_pair():
    """``load_pair("tiny-sdxl", "tiny-dmd")`` on the CPU in float32, built once: do not modify it in a test."""
    from conceptspace.models import load_pair

    return load_pair("tiny-sdxl", "tiny-dmd", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_lcm_pair():
    """``load_pair("tiny-sdxl", "tiny-lcm")`` (student with a guidance embedding), CPU float32, built once."""
    from conceptspace.models import load_pair

    return load_pair("tiny-sdxl", "tiny-lcm", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """Headless Chromium 1280 px wide (skips where it is not installed); see tests/page_checks.py."""
    from page_checks import start_browser

    driver = start_browser(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()
