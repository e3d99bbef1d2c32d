"""RLP inside Megatron-Bridge's ``pretrain()``: the forward step, the EMA lifecycle, metrics, the EMA checkpoint.

Wiring (see :func:`build_rlp_training`)::

    forward_step, callbacks = build_rlp_training(rlp_cfg, layout, eod_id=tokenizer.eod, run_dir=out_dir)
    cfg.model.calculate_per_token_loss = True      # eq. 8's global normaliser = Σ thoughts over micro-batches and DP
    pretrain(cfg, forward_step, callbacks=callbacks)

What the callback does (arXiv 2510.01265: φ initialised to θ at the first step, φ ← τ·φ + (1−τ)·θ after every
optimizer step). RLP steps are the run's steps from ``start_step`` on (the next-token → RLP switch of ``smartpt
train``; None: every step of this run, i.e. continued pretraining from whatever checkpoint it loads):

- ``on_data_init_start`` (PP > 1 only): record the training dataset the dataset provider builds.
- ``on_train_start``: refuse what RLP cannot honour (context parallelism, ``overlap_param_gather``), in one line;
  under PP > 1, check the prerequisites and switch the live model config to ``variable_seq_lengths`` (dense models);
  when the run resumes inside its RLP phase, restore φ and the RLP counters from ``<load>/iter_XXXXXXX/rlp_ema/`` (a
  Megatron distributed checkpoint, :mod:`~nemo_smartpt.rlp.megatron.ema_checkpoint`; any TP/PP layout). A resume
  inside the RLP phase without that state fails unless ``rlp.ema_from_theta_if_missing``.
- ``on_train_step_start`` (RLP steps): allocate φ = θ at the first RLP step (not before: a next-token phase carries
  no fp32 shadow); put the RLP optimiser settings into Bridge's optimizer
  (:class:`~nemo_smartpt.rlp.megatron.optim.RLPOptimizerSettings`: learning rate, schedule, weight decay, clipping,
  Adam reset at the first RLP step); switch dropout off (:func:`~nemo_smartpt.rlp.megatron.rollout.dropout_off`, so
  the trained policy is the sampling policy and S_pred carries no dropout noise); reset the per-step stats; under
  PP > 1, prepare all micro-batches of the step here, collectively over the pipeline group, before the schedule
  starts (:class:`~nemo_smartpt.rlp.megatron.pipeline.PipelineFeed`).
- ``on_train_step_end`` (RLP steps): restore dropout, φ update (skipped iterations skip it too), then one metrics
  line per step (``rlp lr``: the learning rate the step ran with): printed by the pipeline-last, TP-0, DP-0 rank
  (global rank 0 at PP = 1; the rank that holds the reduced loss metrics), appended to ``<run_dir>/metrics.jsonl``
  and sent once, as ``rlp/...``, to Bridge's loggers (TensorBoard, W&B, MLflow); the loss-dict entries are then
  taken out so Bridge's ``training_log`` does not log them a second time.
- ``on_checkpoint_save`` (once φ exists): ``<checkpoint.save>/iter_XXXXXXX/rlp_ema/`` and ``<checkpoint.save>/
  rlp_phase.json`` (the RLP start step; it marks the directory as holding RLP checkpoints).

The EMA shadows are this rank's parameter shards (TP/PP-sharded, fp32, on the parameters' device), updated with fused
``torch._foreach`` ops; no communication. With the distributed optimizer and ``overlap_param_gather`` the updated
weights of other DP ranks arrive only during the next forward, so the update would read stale shards: refused.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path

import torch

from nemo_smartpt.rlp.config import RLPConfig
from nemo_smartpt.rlp.ema import EMAStateError, ParamEMA
from nemo_smartpt.rlp.flops import ModelFlopsSpec
from nemo_smartpt.rlp.megatron.ema_checkpoint import (
    ema_checkpoint_dir,
    has_ema_checkpoint,
    load_ema_checkpoint,
    save_ema_checkpoint,
)
from nemo_smartpt.rlp.megatron.logprobs import RLPPipelineError, unwrap_model
from nemo_smartpt.rlp.megatron.optim import RLPOptimizerSettings
from nemo_smartpt.rlp.megatron.pipeline import PipelineFeed
from nemo_smartpt.rlp.megatron.prepare import PrepStats, RLPPreparer, resolve_generation_engine
from nemo_smartpt.rlp.megatron.rollout import RolloutCounters, dropout_off
from nemo_smartpt.rlp.megatron.step import RLPForwardStep
from nemo_smartpt.rlp.megatron.step_metrics import emit_step_metrics, is_metrics_writer, step_metrics
from nemo_smartpt.rlp.prompt import ThoughtLayout

PHASE_FILE = "rlp_phase.json"


class RLPUnsupportedError(RuntimeError):
    """A Megatron setting that the RLP step cannot honour; raised before the first step."""


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
    start_step: int | None = None
    """The first RLP step as configured (the next-token → RLP switch); None: the first step of this run."""
    rlp_start_step: int | None = None
    """The first RLP step in force (resolved at train start; restored from the checkpoint on a resume)."""
    optim: RLPOptimizerSettings | None = None
    lr: float | None = None
    """The learning rate the current RLP step runs with."""
    last_fresh: bool = False
    """Whether the last finished step was an RLP step (its ``last_metrics`` are this step's)."""

    def is_rlp_step(self, step: int) -> bool:
        return self.rlp_start_step is not None and step >= self.rlp_start_step


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


def rlp_phase_start(checkpoint_dir: str | None) -> int | None:
    """The RLP start step recorded in a checkpoint directory (None: it never saved an RLP checkpoint)."""
    path = Path(checkpoint_dir) / PHASE_FILE if checkpoint_dir else None
    if path is None or not path.exists():
        return None
    return int(json.loads(path.read_text())["rlp_start_step"])


def refuse_unsupported(cfg) -> None:
    """One line per Megatron setting the RLP step cannot honour (called on every rank before step 1)."""
    from megatron.core import parallel_state

    cp = parallel_state.get_context_parallel_world_size() if parallel_state.model_parallel_is_initialized() else 1
    if cp > 1 or getattr(cfg.model, "context_parallel_size", 1) > 1:
        raise RLPUnsupportedError(
            f"RLP does not split its prepared rows over context-parallel ranks: set model.context_parallel_size=1 "
            f"(got {max(cp, getattr(cfg.model, 'context_parallel_size', 1))})"
        )
    ddp = getattr(cfg, "ddp", None)
    if getattr(ddp, "overlap_param_gather", False) and getattr(ddp, "use_distributed_optimizer", False):
        raise RLPUnsupportedError(
            "RLP's EMA reads the updated weights right after optimizer.step(), but ddp.overlap_param_gather=True "
            "gathers other ranks' shards only in the next forward: set ddp.overlap_param_gather=False"
        )


def _make_callback_class():
    from megatron.bridge.training.callbacks import Callback

    class RLPCallback(Callback):
        """EMA init/update, per-step metrics, the EMA distributed checkpoint (see the module docstring)."""

        def __init__(self, run: RLPRun):
            self.run = run
            self._t0 = None

        def on_data_init_start(self, context):
            if getattr(context.state.cfg.model, "pipeline_model_parallel_size", 1) > 1:
                _capture_train_dataset(self.run, context.state.cfg.dataset)

        def on_train_start(self, context):
            run, state = self.run, context.state
            model_cfg = state.cfg.model
            refuse_unsupported(state.cfg)
            engine = resolve_generation_engine(run.cfg.generation_engine)  # every rank: fails early, not mid-step
            if is_metrics_writer():
                print(f"[rlp] generation engine: {engine} (rlp.generation_engine={run.cfg.generation_engine})")
            if run.cfg.shared_prefix_forward:  # one line before step 1 where the grouped layout cannot run
                from nemo_smartpt.rlp.megatron.shared_attention import check_grouped_support

                check_grouped_support(context.model)
            if getattr(model_cfg, "pipeline_model_parallel_size", 1) > 1:
                run.pipeline = _pipeline_feed(run, state, context.model)
            if not getattr(model_cfg, "calculate_per_token_loss", True):
                warnings.warn(
                    "model.calculate_per_token_loss=False: Megatron divides each micro-batch's RLP loss by its own "
                    "thought count, so eq. 8's mean over all thoughts holds only when micro-batches have equal counts",
                    stacklevel=2,
                )
            _resolve_phase(run, state, context.model)
            total = int(getattr(state.cfg.train, "train_iters", 0) or 0)
            run.optim = RLPOptimizerSettings(run.cfg, total - run.rlp_start_step)
            if run.flops_spec is None:
                run.flops_spec = model_flops_spec(context.model)
            if run.seq_length is None:
                run.seq_length = getattr(state.cfg.model, "seq_length", None)

        def on_train_step_start(self, context):
            run = self.run
            step = int(context.state.train_state.step)
            if not run.is_rlp_step(step):
                return
            if not run.ema.initialized:
                run.ema.initialize(ema_params(context.model))  # φ = θ at the first RLP step (the paper)
            run.lr = run.optim.apply(context.optimizer, step - run.rlp_start_step, first=step == run.rlp_start_step)
            self._dropout = dropout_off(context.model)
            self._dropout.__enter__()
            run.preparer.stats = PrepStats()
            run.counters.reset()
            self._t0 = time.perf_counter()
            if run.pipeline is not None:
                from megatron.core.num_microbatches_calculator import get_num_microbatches

                # Collective over the pipeline group, before the schedule's p2p starts (nemo_smartpt.rlp.megatron.pipeline).
                ts = context.state.train_state
                run.pipeline.prepare_step(
                    context.model,
                    step=int(ts.step),
                    consumed=int(ts.consumed_train_samples),
                    num_micro=get_num_microbatches(),
                    micro_batch_size=context.state.cfg.train.micro_batch_size,
                )

        def on_train_step_end(self, context):
            run = self.run
            run.last_fresh = run.is_rlp_step(int(context.state.train_state.step))
            if not run.last_fresh:
                return
            if getattr(self, "_dropout", None) is not None:
                self._dropout.__exit__(None, None, None)  # next-token steps and evaluation keep their dropout
                self._dropout = None
            step_s = time.perf_counter() - (self._t0 or time.perf_counter())
            if not context.skipped_iter:
                run.ema.update(ema_params(context.model))
            # Bridge's scheduler has just written its next-token value for the next step; put the RLP one back now,
            # so that Bridge's own log line (printed after this event) shows the RLP learning rate too.
            step_now = int(context.state.train_state.step)
            run.optim.apply(context.optimizer, step_now + 1 - run.rlp_start_step, first=False)
            metrics = step_metrics(run, context.loss_dict or {}, run.preparer.stats, run.counters, step_s)
            metrics["rlp lr"] = run.lr
            if context.grad_norm is not None:
                metrics["rlp grad norm"] = float(context.grad_norm)
            run.totals["steps"] += 1
            run.totals["generated_tokens"] += run.preparer.stats.generated_tokens
            run.totals["flops"] += metrics.get("rlp flops total", 0.0)
            # Bridge increments train_state.step after this event: +1 gives the iteration number its log prints.
            step = int(context.state.train_state.step) + 1
            metrics["step"] = step
            run.last_metrics = metrics
            emit_step_metrics(run, context.state, metrics, step)
            from nemo_smartpt.bridge.metrics import take_logged_keys

            take_logged_keys(context.loss_dict)  # logged above; Bridge's training_log would repeat them, spaced

        def on_checkpoint_save(self, context):
            run, state = self.run, context.state
            save_dir = state.cfg.checkpoint.save
            if not save_dir or not run.ema.initialized:
                return  # next-token checkpoints before the first RLP step carry no EMA
            iteration = int(state.train_state.step)
            common = {
                **run.totals,
                "rlp_start_step": run.rlp_start_step,
                "ema_num_updates": run.ema.num_updates,
                "ema_decay": run.ema.decay,
            }
            params = ema_params(context.model)
            save_ema_checkpoint(context.model, run.ema.shadow, params, ema_checkpoint_dir(save_dir, iteration), common)
            if _rank() == 0:
                Path(save_dir, PHASE_FILE).write_text(json.dumps({"rlp_start_step": run.rlp_start_step}) + "\n")

    return RLPCallback


def _resolve_phase(run: RLPRun, state, model) -> None:
    """Where the RLP phase starts and whether φ comes back from the loaded checkpoint (see the module docstring)."""
    step = int(state.train_state.step)
    load_dir = state.cfg.checkpoint.load
    loaded = bool(load_dir) and step > 0
    if loaded and has_ema_checkpoint(load_dir, step):
        shadows, common = load_ema_checkpoint(model, ema_params(model), ema_checkpoint_dir(load_dir, step))
        run.ema.shadow, run.ema.num_updates = shadows, int(common.pop("ema_num_updates"))
        run.rlp_start_step = int(common.pop("rlp_start_step"))
        common.pop("ema_decay", None)
        run.totals.update(common)
        return
    recorded = rlp_phase_start(load_dir) if loaded else None
    start = run.start_step if run.start_step is not None else (recorded if recorded is not None else step)
    run.rlp_start_step = start
    if loaded and step > start:
        # The checkpoint is from inside the RLP phase but holds no φ: restarting φ = θ silently would change S_ema.
        if not run.cfg.ema_from_theta_if_missing:
            raise EMAStateError(
                f"resuming at step {step} inside the RLP phase (from step {start}) but "
                f"{ema_checkpoint_dir(load_dir, step)} holds no EMA state; restore it, or set "
                "rlp.ema_from_theta_if_missing=true to restart the baseline weights from the loaded ones"
            )
        warnings.warn(
            f"rlp: no EMA state at step {step}; φ restarts from θ (rlp.ema_from_theta_if_missing)", stacklevel=2
        )


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


def build_rlp_training(
    cfg: RLPConfig,
    layout: ThoughtLayout,
    eod_id: int,
    run_dir: str | None = None,
    flops_spec: ModelFlopsSpec | None = None,
    start_step: int | None = None,
):
    """The forward step and callbacks that turn Bridge's ``pretrain()`` into RLP training.

    Args:
        cfg: RLP config (validated here).
        layout: token ids of the thought prompt and tags (see :func:`nemo_smartpt.rlp.prompt.layout_from_tokenizer`).
        eod_id: the tokenizer's end-of-document id (separates packed documents).
        run_dir: where ``metrics.jsonl`` is appended (None: print and tensorboard only).
        flops_spec: model size for FLOP metrics (None: derived from the model at train start).
        start_step: the first RLP step (the next-token → RLP switch); None: every step of the run is an RLP step.

    Returns:
        ``(forward_step, callbacks)`` for ``pretrain(cfg, forward_step, callbacks=callbacks)``.
    """
    cfg.validate()
    if not layout.end_ids:
        layout = dataclasses.replace(layout, end_ids=(int(eod_id),))  # the end of a document ends a thought
    ema = ParamEMA(cfg.ema_decay)
    counters = RolloutCounters()
    preparer = RLPPreparer(cfg, layout, eod_id, ema=ema, counters=counters)
    run = RLPRun(
        cfg, layout, eod_id, ema, counters, preparer, run_dir=run_dir, flops_spec=flops_spec, start_step=start_step
    )
    return RLPForwardStep(run), [_make_callback_class()(run)]
