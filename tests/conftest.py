"""Test-wide settings. Without a CUDA device the Triton kernels run on Triton's CPU interpreter, which
must be on before any @triton.jit function is defined; with one they compile for the GPU (an explicit
TRITON_INTERPRET in the environment wins either way). No test may reach a model hub."""

import os

import torch

if not torch.cuda.is_available():  # torch.cuda.is_available() does not import triton
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from mstar_fast.demo.tiny import make_tiny_vlm  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny
    models and matmuls gain nothing from threads, and on a shared 2-core machine spinning OpenMP threads
    make them several times (up to ~50x) slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


#: Dimensions of the tiny models built by ``tiny_dirs`` (one layer, 32 wide: fast to build and run).
TINY_SMALL = dict(vocab_size=512, hidden_size=32, image_size=32, num_layers=1)


class _TinyDirs(dict):
    """arch -> tiny model directory, built on first use; an arch whose processor needs a missing package
    (torchvision, in some transformers releases) is skipped, not failed."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, arch):
        try:
            self[arch] = make_tiny_vlm(arch, self.root / arch, **TINY_SMALL)
        except ImportError as e:
            pytest.skip(f"{arch}: {str(e).strip().splitlines()[0]}")
        return self[arch]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Tiny model directories per architecture (``tiny_dirs["llava"]``), shared within a test module."""
    return _TinyDirs(tmp_path_factory.mktemp("tiny"))
