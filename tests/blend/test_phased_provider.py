"""The Megatron-Bridge provider builds train/valid/test from a plan file.

Importing ``megatron.bridge`` on a CPU machine needs the runtime shims, which patch torch globally; the check runs in a
child process so that they never leak into other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import dataclasses, json, sys
    import numpy as np, torch
    from nemo_smartpt.runtime import apply_cpu_runtime

    apply_cpu_runtime()
    from megatron.bridge.data.base import DatasetBuildContext, DatasetProvider
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from megatron.core.tokenizers.text.libraries.null_tokenizer import NullTokenizer
    from nemo_smartpt.blend.phased_spec import PhasedDatasetError
    from nemo_smartpt.blend.provider import PhasedPlanDatasetProvider

    root = sys.argv[1]
    rng = np.random.default_rng(0)
    sources = []
    for s, name in enumerate(["web", "math"]):
        builder = IndexedDatasetBuilder(f"{root}/{name}.bin", dtype=np.int32)
        for doc in range(200):
            n = int(rng.integers(8, 60))
            builder.add_document(torch.tensor(s * 1_000_000 + doc * 1000 + np.arange(n)), [n])
        builder.finalize(f"{root}/{name}.idx")
        sources.append({"name": name, "prefixes": [f"{root}/{name}"]})
    plan = {
        "budget_tokens": 1000 * 16, "seed": 5, "sources": sources,
        "phases": [
            {"name": "p1", "start_token": 0, "end_token": 600 * 16, "weights": {"web": 0.8, "math": 0.2}},
            {"name": "p2", "start_token": 600 * 16, "end_token": 1000 * 16, "weights": {"web": 0.3, "math": 0.7}},
        ],
        "baselines": {"natural": {"web": 0.5, "math": 0.5}, "random_order": {"web": 0.5, "math": 0.5}},
    }
    with open(f"{root}/plan.json", "w") as f:
        json.dump(plan, f)
    provider = PhasedPlanDatasetProvider(
        plan_path=f"{root}/plan.json", seq_length=16, global_batch_size=8, split="90,5,5",
        path_to_cache=f"{root}/cache", num_workers=0,
    )
    tok = NullTokenizer(vocab_size=10**8)
    train, valid, test = provider.build_datasets(DatasetBuildContext(1000, 16, 8, tokenizer=tok))
    try:
        provider.build_datasets(DatasetBuildContext(2000, 16, 8, tokenizer=tok))
        too_many = None
    except PhasedDatasetError as error:
        too_many = str(error)
    natural = dataclasses.replace(provider, baseline="natural").build_datasets(DatasetBuildContext(1000, 0, 0, tok))
    print(json.dumps({
        "is_provider": isinstance(provider, DatasetProvider),
        "fields": [f.name for f in dataclasses.fields(provider)],
        "lens": [len(train), len(valid), len(test)],
        "phases": [train[599]["phase"], train[600]["phase"]],
        "seed": train.config.seed,
        "too_many": too_many,
        "natural": [natural[0].phase_names, natural[1], natural[2]],
    }))
    """
)


@pytest.mark.slow
def test_provider_builds_from_plan_file(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["is_provider"]
    assert {"plan_path", "seq_length", "global_batch_size", "baseline", "split", "continuity"} <= set(result["fields"])
    assert result["lens"] == [1000, 16, 8]
    assert result["phases"] == [0, 1]  # 600 samples: already a multiple of 8
    assert result["seed"] == 5  # from the plan
    assert "asks for 2000 samples" in result["too_many"]
    assert result["natural"] == [["natural"], None, None]
