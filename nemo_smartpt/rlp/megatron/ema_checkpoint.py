"""The EMA weights φ as a Megatron distributed checkpoint next to the model's, resumable under another TP/PP layout.

Each EMA shadow is the fp32 twin of one parameter shard. Its place in the global tensor is exactly the parameter's,
so the checkpoint reuses the model's own ``sharded_state_dict()`` (megatron-core's sharding metadata: global shape,
offsets, replica ids, the GLU and tied-embedding factories) with the parameter's data swapped for the shadow and the
key prefixed with ``rlp_ema.``. ``megatron.core.dist_checkpointing`` writes it to ``<iter_dir>/rlp_ema/`` and reads it
back into whatever layout the resumed run has (TP=2 → TP=1 is tested), the way Bridge reads the model itself.
The RLP counters (steps, tokens, FLOPs, the RLP start step, the EMA update count) ride along as a common object.

Bridge's ``on_checkpoint_save`` fires after its own save on every rank, so writing here is collective like the model
checkpoint. Bridge has no load event for callbacks; the RLP callback reads at ``on_train_start``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from nemo_smartpt.rlp.megatron.logprobs import unwrap_model

EMA_DIR = "rlp_ema"
EMA_PREFIX = "rlp_ema."


def ema_checkpoint_dir(checkpoint_dir: str, iteration: int) -> Path:
    """``<checkpoint_dir>/iter_XXXXXXX/rlp_ema`` (Bridge's iteration directory naming)."""
    return Path(checkpoint_dir) / f"iter_{iteration:07d}" / EMA_DIR


def has_ema_checkpoint(checkpoint_dir: str, iteration: int) -> bool:
    return (ema_checkpoint_dir(checkpoint_dir, iteration) / "metadata.json").exists()


def _chunks(model) -> list:
    return list(model) if isinstance(model, (list, tuple)) else [model]


def _walk(tree, out: list, path: str = "") -> None:
    """``(state-dict path, leaf)`` pairs; the path is unique where a ShardedTensor's key is not (stacked layers)."""
    if isinstance(tree, dict):
        for name, value in tree.items():
            _walk(value, out, f"{path}{name}/")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            _walk(value, out, f"{path}{i}/")
    else:
        out.append((path.rstrip("/"), tree))


def _replica_id(replica_id, param, tp_rank: int):
    """A TP-replicated parameter's replica id with this TP rank in it.

    megatron-core's default for modules without a TP group (the local spec's norms) leaves the TP component at 0 on
    every TP rank, which ``dist_checkpointing`` rejects as two main replicas; the EMA of such a parameter is the same
    on every TP rank (same gradients, same updates), so TP rank 0 writes it.
    """
    if getattr(param, "tensor_model_parallel", False) or not isinstance(replica_id, tuple) or len(replica_id) != 3:
        return replica_id
    return (replica_id[0], max(replica_id[1], tp_rank), replica_id[2])


def ema_sharded_state_dict(model, shadows: list[torch.Tensor], params: list[torch.Tensor]) -> dict:
    """``{slot: ShardedTensor | ShardedTensorFactory}`` of the shadows, placed as the model places ``params``.

    ``shadows[i]`` belongs to ``params[i]`` (the order of :func:`~nemo_smartpt.rlp.megatron.callbacks.ema_params`).
    """
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    by_param = {id(p): s for p, s in zip(params, shadows)}
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    multi = len(_chunks(model)) > 1
    out: dict = {}
    for i, chunk in enumerate(_chunks(model)):
        leaves: list = []
        _walk(unwrap_model(chunk).sharded_state_dict(prefix=f"model{i}." if multi else ""), leaves)
        for path, leaf in leaves:
            if not isinstance(leaf, (ShardedTensor, ShardedTensorFactory)) or leaf.data is None:
                continue
            shadow = by_param.get(id(leaf.data))
            if shadow is None:
                continue  # not a parameter (an extra state or buffer)
            # The checkpoint key is the global tensor's (layers of one stack share it, told apart by their offset
            # on the prepended layer axis); the dict key is the unique state-dict path.
            key = EMA_PREFIX + leaf.key
            slot = EMA_PREFIX + f"{i}/" + path
            replica_id = _replica_id(leaf.replica_id, leaf.data, tp_rank)
            if isinstance(leaf, ShardedTensor):
                out[slot] = dataclasses.replace(leaf, key=key, data=shadow, dtype=shadow.dtype, replica_id=replica_id)
            else:
                out[slot] = dataclasses.replace(leaf, key=key, data=shadow, replica_id=replica_id)
    if not out and params:
        raise RuntimeError("the model's sharded_state_dict holds none of its parameters; cannot checkpoint the EMA")
    return out


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def save_ema_checkpoint(model, shadows, params, directory: Path, common: dict) -> None:
    """Write the shadows (sharded) and ``common`` (the RLP counters) as a distributed checkpoint; collective."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    sharded = ema_sharded_state_dict(model, shadows, params)
    sharded["rlp_state"] = ShardedObject("rlp_ema.rlp_state", dict(common), (1,), (0,), replica_id=_rank())
    if _rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    dist_checkpointing.save(sharded, str(directory))


def load_ema_checkpoint(model, params, directory: Path) -> tuple[list[torch.Tensor], dict]:
    """The shadows (fp32, on each parameter's device, in this run's layout) and the common RLP state; collective."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    targets = [torch.empty(p.shape, dtype=torch.float32, device=p.device) for p in params]
    sharded = ema_sharded_state_dict(model, targets, params)
    key_of = {id(leaf.data): key for key, leaf in sharded.items()}
    # Every rank reads the one common object; only rank 0 may call itself its main replica (megatron validates the
    # access pattern of a load like that of a save, and two main replicas of one object are an error).
    sharded["rlp_state"] = ShardedObject("rlp_ema.rlp_state", None, (1,), (0,), replica_id=_rank())
    loaded = dist_checkpointing.load(sharded, str(directory))
    shadows = []
    for i, (p, t) in enumerate(zip(params, targets)):
        key = key_of.get(id(t))
        if key is None:
            raise RuntimeError(f"parameter {i} {tuple(p.shape)} has no place in the model's sharded_state_dict")
        shadows.append(loaded[key].to(device=p.device, dtype=torch.float32))
    return shadows, dict(loaded["rlp_state"] or {})
