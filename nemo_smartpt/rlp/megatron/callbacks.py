"""RLP inside Megatron-Bridge's ``pretrain()``: the forward step, the EMA lifecycle, metrics, checkpoint side files.

Wiring (see :func:`build_rlp_training`)::

    forward_step, callbacks = build_rlp_training(rlp_cfg, layout, eod_id=tokenizer.eod, run_dir=out_dir)
    cfg.model.calculate_per_token_loss = True      # eq. 8's global normaliser = Σ thoughts over micro-batches and DP
    pretrain(cfg, forward_step, callbacks=callbacks)

What the callback does (arXiv 2510.01265: φ initialised to θ at the first step, φ ← τ·φ + (1−τ)·θ after every
optimizer step):

- ``on_data_init_start`` (PP > 1 only): record the training dataset the dataset provider builds.
- ``on_train_start``: under PP > 1, check the prerequisites (``dataloader_type='single'``, no validation) and switch
  the live model config to ``variable_seq_lengths`` (dense models); then φ = θ, or, when the run resumes from ``<checkpoint.load>/iter_XXXXXXX/`` and that directory holds
  ``rlp_ema_rank{r}.pt``, φ and the RLP counters from that file. Bridge has no load event for callbacks, so the EMA
  lives in a rank-local side file next to the distributed checkpoint (global rank r; resuming needs the same
  parallel layout, otherwise the shard shapes do not match and :class:`~nemo_smartpt.rlp.ema.EMAStateError` is raised).
- ``on_train_step_start``: reset the per-step preparation stats and rollout counters; start the step clock. Under
  PP > 1, prepare all micro-batches of the step here, collectively over the pipeline group, before the schedule
  starts (:class:`~nemo_smartpt.rlp.megatron.pipeline.PipelineFeed`).
- ``on_train_step_end``: φ update (skipped iterations skip it too), then one metrics line per step: printed by the
  pipeline-last, TP-0, DP-0 rank (global rank 0 at PP = 1; the rank that holds the reduced loss metrics),
  appended to ``<run_dir>/metrics.jsonl`` and written to Bridge's tensorboard writer when it exists.
- ``on_checkpoint_save``: ``<checkpoint.save>/iter_XXXXXXX/rlp_ema_rank{r}.pt`` (EMA shards in fp32 + counters).

The EMA shadows are this rank's parameter shards (TP/PP-sharded, fp32, on the parameters' device), updated with fused
``torch._foreach`` ops; no communication.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from pathlib import Path

import torch

from nemo_smartpt.rlp.config import RLPConfig
from nemo_smartpt.rlp.ema import ParamEMA
from nemo_smartpt.rlp.flops import ModelFlopsSpec, ntp_flops_per_token, paper_ntp_equivalent_tokens, rlp_step_flops
from nemo_smartpt.rlp.megatron.logprobs import RLPPipelineError, unwrap_model
from nemo_smartpt.rlp.megatron.pipeline import PipelineFeed
from nemo_smartpt.rlp.megatron.prepare import PrepStats, RLPPreparer, resolve_generation_engine
from nemo_smartpt.rlp.megatron.rollout import RolloutCounters
from nemo_smartpt.rlp.megatron.step import RLPForwardStep
from nemo_smartpt.rlp.prompt import ThoughtLayout

EMA_FILE = "rlp_ema_rank{rank}.pt"


@dataclasses.dataclass
class RLPRun:
    """State shared by the forward step and the callback of one training run."""

    cfg: RLPConfig
    layout: ThoughtLayout
    eod_id: int
    ema: ParamEMA
    counters: RolloutCounters
    preparer: RLPPreparer
    run_dir: str | None = None
    flops_spec: ModelFlopsSpec | None = None
    seq_length: int | None = None
    totals: dict = dataclasses.field(default_factory=lambda: {"steps": 0, "generated_tokens": 0, "flops": 0.0})
    """Counters carried across checkpoints."""
    last_metrics: dict = dataclasses.field(default_factory=dict)
    pipeline: PipelineFeed | None = None
    """Preparation ahead of the schedule (pipeline_model_parallel_size > 1 only)."""
    train_dataset: object = None
    """The training dataset Bridge built (captured at data setup; read under PP only)."""
    eval_uses_rlp: bool = True
    """Whether validation runs this RLP forward step. ``smartpt train`` validates with the next-token step instead
    (comparable across arms), which pipeline parallelism runs like any Megatron evaluation."""


def ema_params(model) -> list[torch.Tensor]:
    """This rank's parameters in a stable order (every model chunk, unwrapped)."""
    chunks = model if isinstance(model, (list, tuple)) else [model]
    return [p for chunk in chunks for p in unwrap_model(chunk).parameters()]


def model_flops_spec(model) -> ModelFlopsSpec:
    """N (decoder parameters of the whole model, TP shards counted TP times), attention layers and width."""
    from megatron.core import parallel_state

    gpt = unwrap_model(model if not isinstance(model, (list, tuple)) else model[0])
    tp = parallel_state.get_tensor_model_parallel_world_size()
    n = sum(
        p.numel() * (tp if getattr(p, "tensor_model_parallel", False) else 1)
        for name, p in gpt.named_parameters()
        if name.startswith("decoder.")
    )
    c = gpt.config
    kv = c.kv_channels or c.hidden_size // c.num_attention_heads
    return ModelFlopsSpec(num_params=float(n), num_attn_layers=c.num_layers, attn_dim=kv * c.num_attention_heads)


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def ema_side_file(checkpoint_dir: str, iteration: int, rank: int | None = None) -> Path:
    """``<checkpoint_dir>/iter_XXXXXXX/rlp_ema_rank{r}.pt`` (Bridge's iteration directory naming)."""
    return Path(checkpoint_dir) / f"iter_{iteration:07d}" / EMA_FILE.format(rank=_rank() if rank is None else rank)


def step_metrics(run: RLPRun, loss_dict: dict, stats: PrepStats, counters: RolloutCounters, step_s: float) -> dict:
    """One step's metrics: the reduced loss-side pairs, derived stds, throughput and FLOPs (this DP rank's work)."""
    out = {k: float(v) for k, v in loss_dict.items() if k.startswith("rlp ")}
    if "rlp reward sq mean" in out and "rlp reward mean" in out:
        out["rlp reward std"] = math.sqrt(max(out.pop("rlp reward sq mean") - out["rlp reward mean"] ** 2, 0.0))
    if "rlp advantage var" in out:
        out["rlp advantage std"] = math.sqrt(max(out.pop("rlp advantage var"), 0.0))
    train_s = max(step_s - stats.generation_s - stats.baseline_s, 1e-9)
    out.update(
        {
            "rlp positions": stats.positions,
            "rlp skipped documents": stats.skipped_documents,
            "rlp prefills": counters.prefills,
            "rlp prefill tokens": counters.prefill_tokens,
            "rlp prefix cached tokens": counters.prefix_cached_tokens,
            "rlp generation s": stats.generation_s,
            "rlp baseline s": stats.baseline_s,
            "rlp step s": step_s,
            "rlp generation tokens/s": stats.generated_tokens / max(stats.generation_s, 1e-9),
            "rlp training tokens/s": stats.scoring_tokens / train_s,
        }
    )
    if run.flops_spec is not None and stats.positions:
        B, G = stats.positions, run.cfg.num_rollouts
        prefix = stats.rollout_prompt_tokens / B
        thought = stats.generated_tokens / (B * G)
        flops = rlp_step_flops(
            run.flops_spec,
            num_positions=B,
            num_rollouts=G,
            rollout_prefix_tokens=prefix,
            thought_tokens=thought,
            baseline_tokens=stats.baseline_tokens / B if stats.baseline_forwards else 0.0,
            baseline_fraction=1.0 if stats.baseline_forwards else 0.0,
        )
        ntp_per_token = ntp_flops_per_token(run.flops_spec, run.seq_length or int(prefix + thought))
        # stats.ntp_tokens > 0 only under the mixed objective: its forward+backward cost is charged at the NTP rate.
        total = flops.total + stats.ntp_tokens * ntp_per_token
        out.update(
            {
                "rlp flops generation": flops.generation,
                "rlp flops training": flops.training,
                "rlp flops baseline": flops.baseline,
                "rlp flops total": total,
                "rlp ntp-equivalent tokens (ours)": total / ntp_per_token,
                "rlp ntp-equivalent tokens (paper)": paper_ntp_equivalent_tokens(G, prefix + thought, B, 1, 0.0)
                + stats.input_tokens,
            }
        )
    return out


def _make_callback_class():
    from megatron.bridge.training.callbacks import Callback

    class RLPCallback(Callback):
        """EMA init/update, per-step metrics, EMA checkpoint side files (see the module docstring)."""

        def __init__(self, run: RLPRun):
            self.run = run
            self._t0 = None

        def on_data_init_start(self, context):
            if getattr(context.state.cfg.model, "pipeline_model_parallel_size", 1) > 1:
                _capture_train_dataset(self.run, context.state.cfg.dataset)

        def on_train_start(self, context):
            run, state = self.run, context.state
            model_cfg = state.cfg.model
            engine = resolve_generation_engine(run.cfg.generation_engine)  # every rank: fails early, not mid-step
            if _is_metrics_writer():
                print(f"[rlp] generation engine: {engine} (rlp.generation_engine={run.cfg.generation_engine})")
            if getattr(model_cfg, "pipeline_model_parallel_size", 1) > 1:
                run.pipeline = _pipeline_feed(run, state, context.model)
            if not getattr(model_cfg, "calculate_per_token_loss", True):
                warnings.warn(
                    "model.calculate_per_token_loss=False: Megatron divides each micro-batch's RLP loss by its own "
                    "thought count, so eq. 8's mean over all thoughts holds only when micro-batches have equal counts",
                    stacklevel=2,
                )
            params = ema_params(context.model)
            load_dir = state.cfg.checkpoint.load
            step = int(state.train_state.step)
            path = ema_side_file(load_dir, step) if load_dir and step > 0 else None
            if path is not None and path.exists():
                saved = torch.load(path, map_location="cpu", weights_only=False)
                run.ema.load_state_dict(saved["ema"], params)
                run.totals.update(saved.get("totals", {}))
            elif not run.ema.initialized:
                run.ema.initialize(params)  # φ = θ at the first step (the paper)
            if run.flops_spec is None:
                run.flops_spec = model_flops_spec(context.model)
            if run.seq_length is None:
                run.seq_length = getattr(state.cfg.model, "seq_length", None)

        def on_train_step_start(self, context):
            self.run.preparer.stats = PrepStats()
            self.run.counters.reset()
            self._t0 = time.perf_counter()
            if self.run.pipeline is not None:
                from megatron.core.num_microbatches_calculator import get_num_microbatches

                # Collective over the pipeline group, before the schedule's p2p starts (see nemo_smartpt.rlp.megatron.pipeline).
                ts = context.state.train_state
                self.run.pipeline.prepare_step(
                    context.model,
                    step=int(ts.step),
                    consumed=int(ts.consumed_train_samples),
                    num_micro=get_num_microbatches(),
                    micro_batch_size=context.state.cfg.train.micro_batch_size,
                )

        def on_train_step_end(self, context):
            run = self.run
            step_s = time.perf_counter() - (self._t0 or time.perf_counter())
            if not context.skipped_iter:
                run.ema.update(ema_params(context.model))
            metrics = step_metrics(run, context.loss_dict or {}, run.preparer.stats, run.counters, step_s)
            run.totals["steps"] += 1
            run.totals["generated_tokens"] += run.preparer.stats.generated_tokens
            run.totals["flops"] += metrics.get("rlp flops total", 0.0)
            # Bridge increments train_state.step after this event: +1 gives the iteration number its log prints.
            step = int(context.state.train_state.step) + 1
            metrics["step"] = step
            run.last_metrics = metrics
            _emit(run, context.state, metrics, step)

        def on_checkpoint_save(self, context):
            state = context.state
            save_dir = state.cfg.checkpoint.save
            if not save_dir:
                return
            path = ema_side_file(save_dir, int(state.train_state.step))
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"ema": self.run.ema.state_dict(), "totals": dict(self.run.totals)}, path)

    return RLPCallback


def _capture_train_dataset(run: RLPRun, provider) -> None:
    """Record the training dataset the provider builds during Bridge's data setup (PP needs to read it ahead).

    Bridge keeps only the iterator, which the schedule consumes; the wrapper is an instance attribute removed again as
    soon as it has run, so the provider object is unchanged afterwards (configs stay serialisable).
    """
    build = getattr(provider, "build_datasets", None)
    if build is None:
        raise RLPPipelineError(
            "RLP under pipeline parallelism reads the step's samples from the training dataset ahead of the schedule; "
            f"the dataset config {type(provider).__name__} has no build_datasets() to take it from"
        )

    def capture(context):
        del provider.__dict__["build_datasets"]
        datasets = build(context)
        run.train_dataset = datasets[0]
        return datasets

    provider.build_datasets = capture


def _pipeline_feed(run: RLPRun, state, model) -> PipelineFeed:
    """Check the PP prerequisites, switch the schedule to variable shapes, build the ahead-of-schedule preparation.

    Prepared micro-batches hold B·G rows of varying length, so the pipeline p2p must exchange shapes
    (``variable_seq_lengths``). Setting it in the user's config trips megatron's check against the default MoE
    ``allgather`` dispatcher even for dense models, so for a dense model it is switched on here, on the live model
    config that the schedule and Bridge's p2p communicator read; an MoE model must set it (with ``alltoall``) itself.
    """
    from megatron.core.utils import get_model_config

    cfg = state.cfg
    live = get_model_config(model[0] if isinstance(model, (list, tuple)) else model)
    if not live.variable_seq_lengths:
        if getattr(live, "num_moe_experts", None):
            raise RLPPipelineError(
                "RLP under pipeline parallelism needs model.variable_seq_lengths=True (with "
                "moe_token_dispatcher_type='alltoall'): prepared micro-batches vary in shape"
            )
        live.variable_seq_lengths = True
    if run.eval_uses_rlp and getattr(cfg.validation, "eval_iters", 0):
        # Evaluation reuses the forward step inside a forward-only schedule, where collective preparation would
        # deadlock just as in training, and nothing prepares the validation samples ahead of it.
        raise RLPPipelineError(
            "RLP under pipeline parallelism prepares only training micro-batches ahead of the schedule; set "
            "validation.eval_iters=0 (or run validation with pipeline_model_parallel_size=1)"
        )
    if getattr(cfg.dataset, "dataloader_type", "single") != "single":
        raise RLPPipelineError(
            "RLP under pipeline parallelism reads samples in MegatronPretrainingSampler order: "
            "dataset.dataloader_type must be 'single'"
        )
    return PipelineFeed(run.preparer, run.train_dataset, cfg.model.seq_length, with_ntp=run.cfg.ntp_loss_weight > 0)


def _is_metrics_writer() -> bool:
    """The rank that logs: pipeline-last, TP-0, DP-0 (it holds the reduced loss metrics; global rank 0 at PP = 1)."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return _rank() == 0
    return (
        parallel_state.is_pipeline_last_stage()
        and parallel_state.get_tensor_model_parallel_rank() == 0
        and parallel_state.get_data_parallel_rank() == 0
    )


def _emit(run: RLPRun, state, metrics: dict, step: int) -> None:
    if _is_metrics_writer():
        shown = ("rlp loss", "rlp reward mean", "rlp s_pred mean", "rlp thought length", "rlp truncation rate")
        print(f"[rlp] step {step} " + " ".join(f"{k[4:]}={metrics[k]:.4g}" for k in shown if k in metrics), flush=True)
        if run.run_dir:
            os.makedirs(run.run_dir, exist_ok=True)
            with open(os.path.join(run.run_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(metrics) + "\n")
    writer = getattr(state, "tensorboard_logger", None)
    if writer is not None:
        for key, value in metrics.items():
            if key != "step":
                writer.add_scalar("rlp/" + key[4:].replace(" ", "_").replace("/", "_per_"), value, step)


def build_rlp_training(
    cfg: RLPConfig,
    layout: ThoughtLayout,
    eod_id: int,
    run_dir: str | None = None,
    flops_spec: ModelFlopsSpec | None = None,
):
    """The forward step and callbacks that turn Bridge's ``pretrain()`` into RLP training.

    Args:
        cfg: RLP config (validated here).
        layout: token ids of the thought prompt and tags (see :func:`layout_from_tokenizer`).
        eod_id: the tokenizer's end-of-document id (separates packed documents).
        run_dir: where ``metrics.jsonl`` is appended (None: print and tensorboard only).
        flops_spec: model size for FLOP metrics (None: derived from the model at train start).

    Returns:
        ``(forward_step, callbacks)`` for ``pretrain(cfg, forward_step, callbacks=callbacks)``.
    """
    cfg.validate()
    ema = ParamEMA(cfg.ema_decay)
    counters = RolloutCounters()
    preparer = RLPPreparer(cfg, layout, eod_id, ema=ema, counters=counters)
    run = RLPRun(cfg, layout, eod_id, ema, counters, preparer, run_dir=run_dir, flops_spec=flops_spec)
    return RLPForwardStep(run), [_make_callback_class()(run)]


def layout_from_tokenizer(cfg: RLPConfig, tokenize, pad_id: int = 0) -> ThoughtLayout:
    """A :class:`ThoughtLayout` from a text tokenizer function ``str -> list[int]`` and the config's strings."""
    from nemo_smartpt.rlp.prompt import render_thought_prompt

    prompt = render_thought_prompt(cfg.thought_prompt, cfg.think_open, cfg.think_close)
    return ThoughtLayout(
        prompt_ids=tuple(tokenize(prompt)) if prompt else (),
        think_open_ids=tuple(tokenize(cfg.think_open)),
        think_close_ids=tuple(tokenize(cfg.think_close)),
        pad_id=pad_id,
        baseline_sees_prompt=cfg.baseline_sees_prompt,
        truncation=cfg.truncation,
    )
