"""Held-out multiple-choice evaluation by log-likelihood, on the live Megatron model at the end of training.

Each task record is ``{"prompt": str, "choices": [str, ...], "answer": int}``. A choice's score is the summed
log-probability of its tokens after the prompt (``acc``) and the same per token (``acc_norm``), as
lm-evaluation-harness scores multiple choice. On the cluster, base checkpoints are evaluated with
lm-evaluation-harness or NeMo Evaluator instead (see the README); this is the CPU stand-in for tiny models.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def load_tasks(path: str | Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record["choices"], list) or not 0 <= int(record["answer"]) < len(record["choices"]):
                    raise ValueError("answer is not an index into choices")
                str(record["prompt"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{line_no}: bad evaluation record ({exc})") from None
            records.append(record)
    return records


@torch.no_grad()
def choice_logprobs(model, tokenizer, prompt: str, choices: list[str], max_len: int) -> list[tuple[float, int]]:
    """(summed log-prob, token count) of each choice after the prompt; the prompt is left-truncated to fit."""
    prompt_ids = tokenizer.encode_batch([prompt])[0]
    out = []
    for choice in choices:
        choice_ids = tokenizer.encode_batch([choice])[0]
        ids = (prompt_ids + choice_ids)[-max_len:]
        n = len(choice_ids)
        tokens = torch.tensor([ids[:-1]])
        position_ids = torch.arange(tokens.shape[1])[None]
        if torch.cuda.is_available():
            tokens, position_ids = tokens.cuda(), position_ids.cuda()
        logits = model(tokens, position_ids, None)
        logp = torch.log_softmax(logits.float(), dim=-1)[0]
        targets = torch.tensor(ids[1:], device=logp.device)
        picked = logp.gather(-1, targets[:, None])[:, 0]
        out.append((float(picked[-n:].sum()), n))
    return out


def evaluate_tasks(model, tokenizer, task_files: dict[str, str], max_len: int) -> dict[str, dict]:
    """Accuracy per task file: ``{name: {"acc", "acc_norm", "n"}}``."""
    was_training = model.training
    model.eval()
    results = {}
    try:
        for name, path in task_files.items():
            records = load_tasks(path)
            hits = hits_norm = 0
            for record in records:
                scores = choice_logprobs(model, tokenizer, record["prompt"], record["choices"], max_len)
                answer = int(record["answer"])
                hits += max(range(len(scores)), key=lambda i: scores[i][0]) == answer
                hits_norm += max(range(len(scores)), key=lambda i: scores[i][0] / max(scores[i][1], 1)) == answer
            n = max(len(records), 1)
            results[name] = {"acc": hits / n, "acc_norm": hits_norm / n, "n": len(records)}
    finally:
        model.train(was_training)
    return results


def eval_callback(task_files: dict[str, str], tokenizer, out_dir: str, max_len: int):
    """A Bridge callback that evaluates at the end of training and writes ``out_dir/eval.json``."""
    from megatron.bridge.training.callbacks import Callback
    from megatron.core import parallel_state

    class EvalAtEnd(Callback):
        def on_train_end(self, context):
            if parallel_state.get_pipeline_model_parallel_world_size() > 1 or (
                parallel_state.get_tensor_model_parallel_world_size() > 1
            ):
                if torch.distributed.get_rank() == 0:
                    print("[smartpt] eval skipped: the CPU evaluator needs TP=1 and PP=1 (use lm-evaluation-harness)")
                return
            results = evaluate_tasks(context.model[0], tokenizer, task_files, max_len)
            results["step"] = context.state.train_state.step
            if torch.distributed.get_rank() == 0:
                Path(out_dir, "eval.json").write_text(json.dumps(results, indent=2))
                summary = ", ".join(f"{k} acc={v['acc']:.3f}" for k, v in results.items() if isinstance(v, dict))
                print(f"[smartpt] eval: {summary}")

    return EvalAtEnd()
