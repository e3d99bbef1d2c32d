"""Peak GPU memory of one RLP step and of a next-token step on the same tokens: the accounting the docs table uses.

Pure arithmetic (no Megatron import), bytes per GPU, for a dense decoder (GQA, SwiGLU, RMSNorm) in bf16 with fp32
main weights and Adam (Megatron mixed precision: 2 + 4 + 4 + 8 = 18 bytes per parameter shard; RLP adds its fp32
EMA shadow: 22), one GPU per TP group (DP = 1, no distributed optimizer), sequence parallelism when TP > 1, flash
attention (no ``s²`` scores kept), dropout off.

Activations kept for backward, per token and layer (bf16, divided by TP under SP)::

    2·(7h + 2·kv + 3·ffn)   the norm inputs, QKV input, Q/K/V and attention output, projection input, MLP input,
                             SwiGLU gate and up outputs and their product (Korthikanti et al. 2022, adapted to GQA
                             and SwiGLU; 34·h for h_ffn = 4h, MHA)

With ``recompute=True`` (full activation recomputation) a layer keeps only its input (2h/TP per token) and one layer's
activations exist at a time during backward.

Logits. A full-logits step keeps ``[T, V/tp]`` in bf16 (2 bytes) plus the fp32 softmax the vocab-parallel
cross-entropy saves (4) and, in backward, its fp32 gradient (4): 10 bytes per token and vocabulary shard entry. RLP's
chunked path (:mod:`nemo_smartpt.rlp.megatron.logits`) holds that for ``chunk`` positions only.

Generation (before the training forward, not at the same time): the KV-cache sampler's cache for one group of G rows
of ``context + thought`` tokens, or the dynamic engine's reserved buffer.
"""

from __future__ import annotations

import dataclasses

GB = 1e9


@dataclasses.dataclass(frozen=True)
class DecoderShape:
    """A dense decoder's sizes."""

    name: str
    hidden: int
    layers: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool = False

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.hidden // self.heads

    @property
    def params(self) -> float:
        """Parameters: attention (Q, K, V, O), SwiGLU MLP (3 matrices), norms, embedding (+ output layer if untied)."""
        attn = self.hidden * (self.hidden + 2 * self.kv_dim) + self.hidden * self.hidden
        mlp = 3 * self.hidden * self.ffn
        per_layer = attn + mlp + 2 * self.hidden
        embed = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return float(self.layers * per_layer + embed + self.hidden)


@dataclasses.dataclass(frozen=True)
class StepShape:
    """One micro-batch of an RLP step: B positions × G thoughts of ``context + thought`` tokens (+ tags)."""

    rollouts: int = 16
    positions: int = 1
    context: int = 2048
    thought: int = 2048
    tags: int = 3
    prompt: int = 0
    logits_chunk: int = 1024

    @property
    def rows(self) -> int:
        return self.positions * self.rollouts

    @property
    def row_tokens(self) -> int:
        return self.prompt + self.context + self.thought + self.tags

    @property
    def tokens(self) -> int:
        return self.rows * self.row_tokens


def activation_bytes(shape: DecoderShape, tokens: int, tp: int, recompute: bool) -> float:
    """Activations kept for backward over ``tokens`` tokens of one micro-batch (per GPU)."""
    per_token_layer = 2.0 * (7 * shape.hidden + 2 * shape.kv_dim + 3 * shape.ffn) / tp
    if not recompute:
        return per_token_layer * tokens * shape.layers
    layer_inputs = 2.0 * shape.hidden / tp * tokens * shape.layers
    return layer_inputs + per_token_layer * tokens  # one layer recomputed at a time


def step_memory(
    shape: DecoderShape, step: StepShape, tp: int = 1, recompute: bool = False, dynamic_buffer_gb: float = 0.0
) -> dict[str, float]:
    """Peak bytes per GPU of an RLP step (chunked logits), the same step with full logits, and a next-token step
    over the same micro-batch tokens. Returns GB per component and the three peaks."""
    P = shape.params / tp
    weights_ntp = 18.0 * P
    weights_rlp = weights_ntp + 4.0 * P  # + the fp32 EMA shadow
    T = step.tokens
    act = activation_bytes(shape, T, tp, recompute)
    vocab_shard = shape.vocab / tp
    full_logits = 10.0 * T * vocab_shard
    chunk_logits = 10.0 * min(step.logits_chunk, T) * vocab_shard
    # The gathered hidden states at the scored positions (thought tokens + one target per row), bf16, full sequence.
    scored = step.rows * (step.thought + 1)
    gathered = 2.0 * scored * shape.hidden * 2  # the gathered copy and its gradient
    kv_cache = 2.0 * 2 * shape.layers * step.rollouts * (step.prompt + step.context + step.thought) * shape.kv_dim / tp
    generation = max(kv_cache, dynamic_buffer_gb * GB)
    rlp = weights_rlp + max(generation, act + gathered + chunk_logits)
    rlp_full = weights_rlp + max(generation, act + full_logits)
    ntp = weights_ntp + act + full_logits
    return {
        "weights+optimizer GB": weights_ntp / GB,
        "ema GB": 4.0 * P / GB,
        "activations GB": act / GB,
        "full logits GB": full_logits / GB,
        "logits chunk GB": chunk_logits / GB,
        "generation GB": generation / GB,
        "rlp training GB": (act + gathered + chunk_logits) / GB,
        "ntp training GB": (act + full_logits) / GB,
        "rlp peak GB": rlp / GB,
        "rlp full-logits peak GB": rlp_full / GB,
        "ntp peak GB": ntp / GB,
        "tokens per micro-batch": float(T),
    }


# The paper's models, approximated as dense decoders: Qwen3-1.7B-like is the paper's 1.7B; "1B" is Llama 3.2 1B's
# shape (the GPU check's model); "12B" is a Mistral-NeMo-12B-like dense stand-in for Nemotron-Nano-12B-v2 (hybrid
# Mamba-2: its Mamba layers keep less activation than attention layers, so this over-estimates).
LLAMA_1B = DecoderShape("1B (Llama-3.2-1B shape)", 2048, 16, 8192, 32, 8, 131072, tied_embeddings=True)
DENSE_12B = DecoderShape("12B (dense, Mistral-NeMo-12B shape)", 5120, 40, 14336, 32, 8, 131072)


def paper_table(vocabs=(131072, 151936), tps=(1, 2, 4), recompute: bool = True) -> list[dict]:
    """The docs table: both models × both vocabularies × TP, at G=16, 2048-token contexts and thoughts, B=1."""
    rows = []
    for base in (LLAMA_1B, DENSE_12B):
        for vocab in vocabs:
            shape = dataclasses.replace(base, vocab=vocab)
            for tp in tps:
                m = step_memory(shape, StepShape(), tp=tp, recompute=recompute)
                rows.append({"model": base.name, "vocab": vocab, "tp": tp, "params B": shape.params / 1e9, **m})
    return rows
