"""Shared test set-up: the CPU runtime, and fixtures for tiny Megatron models and indexed datasets.

The CPU shims are applied before any test module imports megatron (a no-op on a GPU machine), so every test runs the
real megatron-core / megatron-bridge code the way a CPU user of the package would.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest
import torch

from nemo_smartpt.runtime import apply_cpu_runtime

apply_cpu_runtime()

TINY_VOCAB = 128
TINY_EOD = TINY_VOCAB - 1
FOUR_LEARNERS = Path(__file__).resolve().parents[1] / "examples" / "studies" / "four_learners.py"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Variables a test's process leaves behind that would change what the next test (or a CLI subprocess it starts) does:
# megatron's attention-backend flags, and the rendezvous that an in-process pretrain() fills in for a world of one.
_PROCESS_STATE_ENV = re.compile(r"NVTE_.*|MASTER_ADDR|MASTER_PORT|RANK|LOCAL_RANK|WORLD_SIZE|LOCAL_WORLD_SIZE")


@pytest.fixture(autouse=True)
def isolated_process_env():
    """Each test starts from the environment it was given.

    - Megatron's model constructor writes the attention backend into ``NVTE_*`` variables and asserts that later
      models agree (``LanguageModule._set_attention_backend``): a tiny ``auto`` GPT in one test broke every later
      ``local`` one (``adapt_to_cpu``), in this process and in the CLI subprocesses that inherited the variables.
    - An in-process ``pretrain()`` sets ``MASTER_PORT``/``WORLD_SIZE`` for its world of one; a later subprocess that
      inherits them rendezvouses on that port instead of a free one, and fails with ``EADDRINUSE`` if it is taken.
    """
    saved = {key: value for key, value in os.environ.items() if _PROCESS_STATE_ENV.fullmatch(key)}
    yield
    for key in [key for key in os.environ if _PROCESS_STATE_ENV.fullmatch(key)]:
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

    from nemo_smartpt.testing.megatron import init_single_process

    try:
        init_single_process(seed=1234)
        yield
    finally:
        parallel_state.destroy_model_parallel()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.fixture
def tiny_gpt(single_process_group):
    """megatron-core ``GPTModel`` with the local layer spec (2 layers, width 32, vocab 128), fp32 on CPU."""
    from nemo_smartpt.testing.megatron import TinyGPTSpec, build_tiny_gpt

    return build_tiny_gpt(TinyGPTSpec(vocab_size=TINY_VOCAB))


@pytest.fixture
def tiny_llama(single_process_group):
    """The tiny GPT in the Llama 3 / Qwen 3 shape: RoPE, grouped-query attention (2 KV heads for 4 query heads),
    SwiGLU, RMSNorm, no linear biases, untied output layer; local layer spec, fp32 on CPU."""
    from nemo_smartpt.testing.megatron import TinyGPTSpec, build_tiny_gpt

    return build_tiny_gpt(TinyGPTSpec(vocab_size=TINY_VOCAB, family="llama"))


@pytest.fixture(scope="session")
def bundled_data(tmp_path_factory):
    """The bundled corpus, prepared into indexed datasets once per test session (``data.bundled_dir=`` of a run)."""
    from nemo_smartpt.bundled.build import ensure_bundled_catalog

    directory = tmp_path_factory.mktemp("bundled_data")
    ensure_bundled_catalog(directory)
    return str(directory)


@pytest.fixture(scope="session")
def four_learners():
    """The study script (examples/studies/four_learners.py) as a module: examples/ is not a package."""
    spec = importlib.util.spec_from_file_location("four_learners", FOUR_LEARNERS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
