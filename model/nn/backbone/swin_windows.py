"""Swin's window layout: partition / reverse, the shifted-window region mask, window plans.

All functions take their sizes as Python ints read from tensor shapes and build index tensors
with tensor arithmetic, so they follow traced sizes in an ONNX export (except the grouped
plan, whose window reordering loops over window counts in Python).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Logit added between tokens of different regions inside a shifted window (Swin's choice).
REGION_MASK_VALUE = -100.0


def pad_amount(size: int, multiple: int) -> int:
    """Zero-padding that brings ``size`` up to a multiple of ``multiple`` (0 if divisible)."""
    return (multiple - size % multiple) % multiple


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """Split a padded feature map into non-overlapping windows.

    Args:
        x: BxHpxWpxC, Hp and Wp multiples of ``window_size``.
        window_size: side of a square window (ws).

    Returns:
        (B*nW)x(ws*ws)xC tokens, windows in row-major order per image.
    """
    b, hp, wp, c = x.shape
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


def window_reverse(windows: Tensor, window_size: int, batch: int, hp: int, wp: int) -> Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        windows: (B*nW)x(ws*ws)xC tokens.
        window_size: side of a square window (ws).
        batch: B.
        hp: padded height Hp.
        wp: padded width Wp.

    Returns:
        BxHpxWpxC feature map.
    """
    c = windows.shape[-1]
    x = windows.view(batch, hp // window_size, wp // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, hp, wp, c)


def shifted_window_mask(
    hp: int, wp: int, window_size: int, shift: int, device: torch.device
) -> Tensor:
    """Additive attention mask that keeps shifted windows from mixing wrapped-around regions.

    The padded map is cut into 3 row bands and 3 column bands (``[0, Hp-ws)``,
    ``[Hp-ws, Hp-shift)``, ``[Hp-shift, Hp)``); tokens of different bands in the same window
    get ``-100``. Computed with comparisons on ``arange`` so it follows traced sizes.

    Args:
        hp: padded height Hp (multiple of ws).
        wp: padded width Wp (multiple of ws).
        window_size: ws.
        shift: cyclic shift of the block (ws // 2).
        device: device of the result.

    Returns:
        nWx(ws*ws)x(ws*ws) float32 mask with values 0 or -100.
    """
    rows = torch.arange(hp, device=device)
    cols = torch.arange(wp, device=device)
    row_band = (rows >= hp - window_size).long() + (rows >= hp - shift).long()
    col_band = (cols >= wp - window_size).long() + (cols >= wp - shift).long()
    region = (row_band[:, None] * 3 + col_band[None, :])[None, :, :, None]
    region_windows = window_partition(region, window_size).squeeze(-1)  # nW x N
    different = region_windows[:, None, :] != region_windows[:, :, None]
    zeros = torch.zeros(different.shape, dtype=torch.float32, device=device)
    return zeros.masked_fill(different, REGION_MASK_VALUE)


class WindowPlan(NamedTuple):
    """Where each token of a (padded, shifted) map goes when it is cut into windows.

    Attributes:
        to_windows: (nW*N,) int64 index into ``[pad; tokens]`` (the pad row first, then the
            H*W tokens in row-major order) of every window slot: 0 for a padded position,
            ``t + 1`` for token ``t``.
        from_windows: (H*W,) int64 slot (in window order) of each token.
        groups: ``(first window, end window, mask window)`` per run of windows that share one
            region-mask pattern (eager shifted blocks), or ``()``: all windows in one call.
        token_rows: (nW*N,) int64 token of every slot, 0 for padded ones.
        pad_slots: (K,) int64 slots of padded positions.
    """

    to_windows: Tensor
    from_windows: Tensor
    groups: tuple[tuple[int, int, int], ...]
    token_rows: Tensor
    pad_slots: Tensor


def window_plan(
    height: int, width: int, window_size: int, shift: int, grouped: bool, device: torch.device
) -> WindowPlan:
    """Index maps that take an HxW token map straight to its windows and back.

    The same layout steps as the block's pad -> roll -> partition (and partition^-1 -> roll
    back -> crop), applied once to token numbers instead of every block's features, so a
    block gathers its windows with one ``index_select`` and its per-token linear layers see
    only the H*W real tokens. With ``grouped`` (eager, shifted) the windows are reordered so
    that those sharing a region-mask pattern are contiguous: interior windows, then the last
    column, the last row and the corner (see ``SwinBlock._attend_planned``). Traceable: the
    ungrouped plan follows traced sizes.

    Args:
        height: H.
        width: W.
        window_size: ws.
        shift: cyclic shift (0 for unshifted blocks).
        grouped: reorder windows by mask pattern (Python loop over window counts: eager only).
        device: device of the index tensors.

    Returns:
        The :class:`WindowPlan`.
    """
    ws = window_size
    pad_h, pad_w = pad_amount(height, ws), pad_amount(width, ws)
    tokens = torch.arange(1, height * width + 1, device=device).view(1, height, width, 1)
    tokens = F.pad(tokens, (0, 0, 0, pad_w, 0, pad_h))  # padded positions: 0
    if shift > 0:
        tokens = torch.roll(tokens, shifts=(-shift, -shift), dims=(1, 2))
    hp, wp = tokens.shape[1], tokens.shape[2]
    windows = window_partition(tokens, ws)  # nW x N x 1
    groups: tuple[tuple[int, int, int], ...] = ()
    if grouped:
        rows_w, cols_w = hp // ws, wp // ws
        ids = torch.arange(rows_w * cols_w, device=device).view(rows_w, cols_w)
        order, bounds, start = [], [], 0
        for part in (ids[:-1, :-1], ids[:-1, -1:], ids[-1:, :-1], ids[-1:, -1:]):
            if part.numel():
                order.append(part.reshape(-1))
                bounds.append((start, start + part.numel(), int(part.reshape(-1)[0])))
                start += part.numel()
        permutation = torch.cat(order)
        windows = windows[permutation]
        groups = tuple(bounds)
    slots = torch.arange(windows.numel(), device=device).view(windows.shape)
    if grouped:
        slots = torch.empty_like(slots).index_copy_(0, permutation, slots)
    slots = window_reverse(slots, ws, 1, hp, wp)
    if shift > 0:
        slots = torch.roll(slots, shifts=(shift, shift), dims=(1, 2))
    from_windows = slots[:, :height, :width].reshape(-1)
    to_windows = windows.reshape(-1)
    token_rows = (to_windows - 1).clamp(min=0)
    pad_slots = (to_windows == 0).nonzero().squeeze(1)
    return WindowPlan(to_windows, from_windows, groups, token_rows, pad_slots)


@functools.lru_cache(maxsize=32)
def cached_window_plan(
    height: int, width: int, window_size: int, shift: int, grouped: bool, device: torch.device
) -> WindowPlan:
    """:func:`window_plan` for eager inference: built once per size on the CPU (no device
    synchronisation on GPUs), then kept on ``device``. Its tensors must not be modified."""
    plan = window_plan(height, width, window_size, shift, grouped, torch.device("cpu"))
    return plan._replace(
        to_windows=plan.to_windows.to(device),
        from_windows=plan.from_windows.to(device),
        token_rows=plan.token_rows.to(device),
        pad_slots=plan.pad_slots.to(device),
    )


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x.index_select(1, index)`` as one 2-d row gather (several times faster on the CPU).

    Args:
        x: BxRxC.
        index: (K,) int64 rows of each image.

    Returns:
        BxKxC.
    """
    b, r, c = x.shape
    if b == 1:
        return x.reshape(r, c).index_select(0, index).view(1, -1, c)
    rows = (torch.arange(b, device=x.device)[:, None] * r + index[None]).reshape(-1)
    return x.reshape(b * r, c).index_select(0, rows).view(b, -1, c)


def relative_position_index(window_size: int) -> Tensor:
    """Index into the (2ws-1)^2 bias table for every (query, key) pair of a window.

    Returns:
        (ws*ws)x(ws*ws) int64.
    """
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)  # 2 x N
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return relative[:, :, 0] * (2 * window_size - 1) + relative[:, :, 1]
