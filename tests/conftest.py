"""Shared test set-up: the CPU runtime, and fixtures for tiny Megatron models and indexed datasets.

The CPU shims are applied before any test module imports megatron (a no-op on a GPU machine), so every test runs the
real megatron-core / megatron-bridge code the way a CPU user of the package would.
"""

from __future__ import annotations

import os

import pytest
import torch

from nemo_smartpt.runtime import apply_cpu_runtime

apply_cpu_runtime()

TINY_VOCAB = 128
TINY_EOD = TINY_VOCAB - 1


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def isolated_attention_backend_env():
    """Megatron's model constructor writes the attention backend into ``NVTE_*`` environment variables and asserts
    that later models agree (``LanguageModule._set_attention_backend``). One test building an ``auto`` model (the
    tiny GPT) and the next a ``local`` one (``adapt_to_cpu``), or a CLI subprocess inheriting the first one's
    variables, would then fail by test order alone: each test starts from the environment it was given."""
    saved = {key: value for key, value in os.environ.items() if key.startswith("NVTE_")}
    yield
    for key in [key for key in os.environ if key.startswith("NVTE_")]:
        del os.environ[key]
    os.environ.update(saved)


@pytest.fixture
def tiny_indexed_dataset(tmp_path):
    """A real megatron-core indexed dataset (``.bin``/``.idx``) of 200 learnable documents; returns its prefix."""
    from nemo_smartpt.testing.indexed_data import progression_documents, write_indexed_dataset

    docs = progression_documents(num_docs=200, vocab_size=TINY_VOCAB, eod=TINY_EOD, seed=0)
    return write_indexed_dataset(tmp_path / "tiny", docs)


@pytest.fixture
def single_process_group():
    """torch.distributed (gloo, world size 1) and megatron model-parallel state in this process, torn down after."""
    from megatron.core import parallel_state

    from nemo_smartpt.testing.distributed import free_port
    from nemo_smartpt.testing.megatron import init_model_parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    try:
        init_model_parallel(1, 1, seed=1234)
        yield
    finally:
        parallel_state.destroy_model_parallel()
        torch.distributed.destroy_process_group()


@pytest.fixture
def tiny_gpt(single_process_group):
    """megatron-core ``GPTModel`` with the local layer spec (2 layers, width 32, vocab 128), fp32 on CPU."""
    from nemo_smartpt.testing.megatron import TinyGPTSpec, build_tiny_gpt

    return build_tiny_gpt(TinyGPTSpec(vocab_size=TINY_VOCAB))


@pytest.fixture(scope="session")
def bundled_data(tmp_path_factory):
    """The bundled corpus, prepared into indexed datasets once per test session (``data.bundled_dir=`` of a run)."""
    from nemo_smartpt.bundled.build import ensure_bundled_catalog

    directory = tmp_path_factory.mktemp("bundled_data")
    ensure_bundled_catalog(directory)
    return str(directory)
