"""The grouped (shared-prefix) layout of an RLP training micro-batch: pure index arithmetic, no Megatron.

The per-row layout (:mod:`nemo_smartpt.rlp.megatron.prepare`) holds G rows per target position,
``P x_<t <think> c_i </think>`` (input ids; the label of the last position is x_t), so the shared prefix
``P x_<t <think>`` is encoded G times. The grouped layout holds ONE packed row per group::

    [ prefix (p_b real, padded to P) | suffix_1 (t_1, padded to R) | ... | suffix_G (t_G, padded to R) ]
      packed length S = P + G·R

where suffix_i = the row's input ids after the prefix (the thought, a forced ``</think>`` if any). Positions restart
for every suffix: suffix token j of any thought has position p_b + j, exactly its position in the per-row layout, so
learned absolute positions and RoPE see the same numbers. Attention is the Prefix Grouper split (arXiv 2506.05433):
prefix tokens attend causally within the prefix; suffix tokens attend to the real prefix keys (< p_b) and causally to
their own suffix, never to another thought. Because every region has a fixed offset, attention needs only
``(P, G, R, p_b)`` per packed row (:func:`layout_header`), and the regions are plain views of the sequence dimension.

The loss is unchanged: :func:`to_row_layout` gathers any per-packed-position tensor (hidden states, logits) back to
``[rows, L, ...]`` of the per-row layout through ``sp_index_NL`` (flat ``packed_row·S + position``). The last prefix
position is gathered G times (its logits score each thought's first token), so in backward its gradient is the sum
over the G thoughts, as in the per-row layout where each row holds its own copy.

Next-token rows of the mixed objective (``ntp_loss_weight > 0``) become packed rows of their own: the document is the
"prefix" (p = its length) and every suffix slot is padding.

Cost per group, G thoughts of length R after a prefix of length P (linear layers count tokens, attention counts
query-key pairs): per-row G·(P + R) tokens and G·(P + R)² pairs; grouped P + G·R tokens and P² + G·R·(P + R) pairs.
At P = R, G = 16: 1.88x fewer tokens and 2.1x fewer pairs.

Prepared keys added (all on the prepared batch, see :func:`shared_prefix_batch`):
``sp_input_ids_RS``, ``sp_position_ids_RS`` (``[rows R, S]``), ``sp_layout_R4`` (``P, G, R, p`` per packed row) and
``sp_index_NL`` (per-row position → flat packed index; padded with 0 like every ``*_NL`` key).
"""

from __future__ import annotations

import torch

SHARED_KEYS = ("sp_input_ids_RS", "sp_position_ids_RS", "sp_layout_R4")
"""Keys of the packed micro-batch (besides ``sp_index_NL``, which lives in the per-row layout)."""


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def shared_prefix_batch(
    input_ids_NL: torch.Tensor,
    num_rollouts: int,
    prefix_len_B: torch.Tensor,
    row_len_N: torch.Tensor,
    pad_id: int = 0,
    length_multiple: int = 1,
) -> dict[str, torch.Tensor]:
    """Pack a per-row prepared micro-batch into the grouped layout.

    Args:
        input_ids_NL: ``[B·G + M, L]`` per-row input ids (B groups of G rows, then M next-token rows).
        num_rollouts: G.
        prefix_len_B: shared prefix length ``len(P x_<t <think>)`` of each group.
        row_len_N: real (unpadded) input length of every row, next-token rows included.
        pad_id: id written into padding slots.
        length_multiple: the packed length S is a multiple of this (tensor-parallel size under sequence
            parallelism, whose embedding scatter splits the sequence); the prefix region takes the extra padding.

    Returns:
        The ``sp_*`` tensors (see the module docstring).
    """
    G = int(num_rollouts)
    B = int(prefix_len_B.numel())
    total, L = input_ids_NL.shape
    N = B * G
    if total < N or row_len_N.numel() != total:
        raise ValueError(f"{total} rows / {row_len_N.numel()} lengths for {B} groups of {G}")
    prefix = [int(p) for p in prefix_len_B]
    lengths = [int(n) for n in row_len_N]
    suffix = [lengths[n] - prefix[n // G] for n in range(N)]
    if any(s < 0 for s in suffix) or any(n > L for n in lengths):
        raise ValueError("a row is shorter than its group's prefix or longer than the batch")
    ntp = lengths[N:]
    R = max([1, *suffix])
    P = max([*prefix, *ntp])
    P += _ceil_to(P + G * R, length_multiple) - (P + G * R)
    S = P + G * R
    rows = B + len(ntp)

    ids_RS = torch.full((rows, S), pad_id, dtype=input_ids_NL.dtype)
    pos_RS = torch.zeros((rows, S), dtype=torch.long)
    layout_R4 = torch.zeros((rows, 4), dtype=torch.long)
    layout_R4[:, 0], layout_R4[:, 1], layout_R4[:, 2] = P, G, R
    index_NL = torch.zeros((total, L), dtype=torch.long)
    for b in range(B):
        p = prefix[b]
        first = input_ids_NL[b * G]
        for n in range(b * G + 1, (b + 1) * G):
            if not torch.equal(input_ids_NL[n, :p], first[:p]):
                raise ValueError(f"row {n} does not share the prefix of its group {b} (first {p} tokens)")
        layout_R4[b, 3] = p
        ids_RS[b, :p] = first[:p]
        pos_RS[b, :p] = torch.arange(p)
        index_NL[b * G : (b + 1) * G, :p] = b * S + torch.arange(p)
        for i in range(G):
            n, t = b * G + i, suffix[b * G + i]
            start = P + i * R
            ids_RS[b, start : start + t] = input_ids_NL[n, p : p + t]
            pos_RS[b, start : start + t] = torch.arange(p, p + t)
            index_NL[n, p : p + t] = b * S + start + torch.arange(t)
    for m, length in enumerate(ntp):
        r, n = B + m, N + m
        layout_R4[r, 3] = length
        ids_RS[r, :length] = input_ids_NL[n, :length]
        pos_RS[r, :length] = torch.arange(length)
        index_NL[n, :length] = r * S + torch.arange(length)
    return {
        "sp_input_ids_RS": ids_RS,
        "sp_position_ids_RS": pos_RS,
        "sp_layout_R4": layout_R4,
        "sp_index_NL": index_NL,
    }


def layout_header(layout_R4: torch.Tensor) -> tuple[int, int, int]:
    """``(P, G, R)`` of a packed micro-batch (the same in every row)."""
    P, G, R = (int(v) for v in layout_R4[0, :3])
    return P, G, R


def to_row_layout(packed_RS: torch.Tensor, index_NL: torch.Tensor) -> torch.Tensor:
    """``[R, S, ...]`` per packed position → ``[N, L, ...]`` per row position (a differentiable gather)."""
    flat = packed_RS.reshape(packed_RS.shape[0] * packed_RS.shape[1], *packed_RS.shape[2:])
    return flat[index_NL.to(flat.device)]


def region_positions(layout_R4: torch.Tensor) -> torch.Tensor:
    """``[R, S]`` position of every packed slot from the header alone (suffix slot j of row r: p_r + j; padding
    slots get positions too, never seen by a real token). RoPE is applied from these inside attention."""
    P, G, R = layout_header(layout_R4)
    prefix_len_R = layout_R4[:, 3:4]
    head = torch.arange(P, device=layout_R4.device).expand(layout_R4.shape[0], P)
    tail = prefix_len_R + torch.arange(R, device=layout_R4.device).repeat(G)
    return torch.cat([head, tail], dim=1)


def grouped_token_counts(prefix_len: float, thought_len: float, num_rollouts: int) -> tuple[float, float]:
    """Tokens one group pushes through the linear layers: ``(per-row, grouped)`` = ``(G·(P + R), P + G·R)``."""
    G = num_rollouts
    return G * (prefix_len + thought_len), prefix_len + G * thought_len


def grouped_attention_pairs(prefix_len: float, thought_len: float, num_rollouts: int) -> tuple[float, float]:
    """Query-key pairs one group scores (dense score matrices, as the local spec computes them):
    ``(per-row, grouped)`` = ``(G·(P + R)², P² + G·R·(P + R))``."""
    P, R, G = prefix_len, thought_len, num_rollouts
    return G * (P + R) ** 2, P * P + G * R * (P + R)
