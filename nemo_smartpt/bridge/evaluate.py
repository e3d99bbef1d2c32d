"""Held-out evaluation at the end of ``smartpt train``: lm-evaluation-harness on the live Megatron model.

The callback wraps the trained model in :class:`nemo_smartpt.evaluation.lm.SmartptLM` (the ``smartpt`` lm-eval
model) and runs the run's tasks (:func:`nemo_smartpt.bridge.objective.eval_tasks`) through lm-eval's
``simple_evaluate``; rank 0 writes lm-eval's results JSON to ``out_dir/eval.json``. It is the same adapter and task
files ``smartpt eval run_dir=...`` uses on the saved checkpoint. Tensor-parallel ranks all take part (the adapter
combines vocabulary shards); under pipeline parallelism evaluate the checkpoint with ``smartpt eval`` instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def eval_callback(tasks: list[str], include_path: str | None, tokenizer, out_dir: str, batch_size: int = 32):
    """A Bridge callback that evaluates at the end of training and writes ``out_dir/eval.json``."""
    from megatron.bridge.training.callbacks import Callback
    from megatron.core import parallel_state

    class EvalAtEnd(Callback):
        def on_train_end(self, context):
            if parallel_state.get_pipeline_model_parallel_world_size() > 1:
                if torch.distributed.get_rank() == 0:
                    print("[smartpt] eval skipped under pipeline parallelism: run smartpt eval run_dir=... after")
                return
            from nemo_smartpt.evaluation.harness import evaluate, summary_line
            from nemo_smartpt.evaluation.lm import SmartptLM

            lm = SmartptLM(model=context.model[0], tokenizer=tokenizer, batch_size=batch_size)
            results = evaluate(lm, tasks, include_path)
            results["step"] = context.state.train_state.step
            if torch.distributed.get_rank() == 0:
                Path(out_dir, "eval.json").write_text(json.dumps(results, indent=2))
                print(f"[smartpt] eval: {summary_line(results)}")

    return EvalAtEnd()
