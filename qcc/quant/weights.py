"""Weight facts both quantization schemes share: degenerate output channels.

Trained networks often keep output channels whose weights are all (near) zero:
pruned or dead filters, stored as values like 1e-30 (MobileNets have them).
Quantizing such a channel with a scale fitted to its own maximum gives an
absurd scale (s_w ~ 1e-32): the bias at s_in * s_w saturates int32, the int8
requantization multiplier rounds to 0, and a Qm.n output shift leaves the
[-31, 31] range. Numerically the channel is its bias alone.

A channel c is degenerate when::

    max |w[c]| <= DEGENERATE_RATIO * max |w|        (DEGENERATE_RATIO = 2^-24)

i.e. its weights vanish next to the largest one at float32 resolution (or the
channel is exactly zero). It is quantized with the largest non-degenerate
channel maximum instead of its own, so its weights quantize to exact zeros, its
bias keeps an ordinary scale, and its shifts / multipliers equal an ordinary
channel's (per-channel overflow bounds then see only its bias). When every
channel is zero the schemes keep their all-zero rule.
"""
from __future__ import annotations

from typing import List

import numpy as np

DEGENERATE_RATIO = 2.0 ** -24


def channel_max_abs(w: np.ndarray) -> np.ndarray:
    """max |w| per output channel (axis 0), float64."""
    w = np.asarray(w, np.float64)
    return np.abs(w.reshape(w.shape[0], -1)).max(axis=1) if w.size else np.zeros(w.shape[0] if w.ndim else 0)


def degenerate_channels(w: np.ndarray) -> np.ndarray:
    """Boolean mask over output channels (axis 0) whose weights vanish (see the module docstring)."""
    mags = channel_max_abs(w)
    top = mags.max(initial=0.0)
    return mags <= DEGENERATE_RATIO * top if top > 0 else np.zeros(mags.shape, bool)


def safe_channel_max_abs(w: np.ndarray) -> np.ndarray:
    """Per-channel max |w| with each degenerate channel given the tensor's largest maximum."""
    mags = channel_max_abs(w)
    return np.where(degenerate_channels(w), mags.max(initial=0.0), mags)


def describe_degenerate(layer: str, w: np.ndarray) -> List[str]:
    """One note per degenerate channel of ``layer``'s weights, for warnings and the report."""
    mask = degenerate_channels(w)
    if not mask.any():
        return []
    mags = channel_max_abs(w)
    chans = ", ".join(f"{c} (max |w| = {mags[c]:.3g})" for c in np.flatnonzero(mask))
    s = "s" if mask.sum() > 1 else ""
    return [f"{layer}: output channel{s} {chans} {'have' if s else 'has'} (near-)zero weights; quantized as "
            f"zeros with the layer's coarsest weight scale (the output is the bias)"]
