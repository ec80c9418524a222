"""Calibration: tensor statistics from running the float graph, and range methods.

Statistics (``TensorStats``) keep, per tensor, the exact min, max and element
count and two histograms with ``bins`` bins over ``[0, 2^k)``: one of the
non-negative values ``x`` and one of ``-x`` for the negative values (their sum
is the histogram of ``|x|``). ``k`` is the smallest integer with
``max|x| < 2^k``. When new data exceeds the range, ``k`` grows and every
``2^dk`` neighbouring bins merge into one. Because the range is a power of two
and ``bins`` is a power of two, the bin index ``floor(|x| * bins / 2^k)`` is
computed exactly, and merging equals binning the data afresh at the wider
range: the statistics of a dataset do not depend on how it was split into
batches or processes (``--jobs N`` gives the same ranges as ``--jobs 1``).

Range methods, ``compute_range(stats, method, **opts) -> (lo, hi)``:

* ``minmax``: the observed ``(min, max)``.
* ``percentile`` (``p=99.99``, ``symmetric=True``): with ``symmetric``, the
  p-th percentile ``t`` of ``|x|``, then ``(max(min, -t), min(max, t))``;
  otherwise the (100-p)-th and p-th percentiles of ``x`` itself. Linear
  interpolation inside the bin, so the error is below one bin width.
* ``entropy`` (``bits=8``, or ``levels=`` directly): the KL-divergence
  threshold search of TensorRT (Migacz, GTC 2017) as MXNet / ONNX Runtime
  implement it, on the histogram of ``|x|`` trimmed to its last non-empty bin
  (between bins/2 and bins bins, 2048 by default). For each candidate
  ``i = levels .. n``: P is bins ``[0, i)`` with the outlier count added to bin
  ``i-1``; Q quantizes bins ``[0, i)`` into ``levels = 2^(bits-1)`` groups
  (128 for int8; the last group takes the remainder) and spreads each group's
  count evenly over its bins where P is non-zero. Both are smoothed (eps
  1e-4) and the threshold is the upper edge ``i * width`` minimizing KL(P||Q).
  Candidates below the median of ``|x|`` are skipped (there P and Q both
  collapse onto the clip bin and KL vanishes for a useless range). When
  ``levels >= n`` quantization is finer than the histogram and the observed
  range is kept (16-bit).
* ``mse`` (``bits=8``): the clip threshold ``t`` (a bin edge) minimizing the
  expected squared error of symmetric quantization with step
  ``d = t / (2^(bits-1) - 1)``: ``d^2/12`` per value inside ``[-t, t]`` plus
  ``(|x| - t)^2`` per clipped value (values taken at bin centres).

Clipping methods never widen the observed range: they return
``(max(min, -t), min(max, t))``. Ranges are not forced to include zero; the
pass that picks scales does that.
"""
from __future__ import annotations

import math
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from qcc.quant.calibration_data import CalibrationData, describe_formats, iter_calibration_batches
from qcc.errors import InputError
from qcc.ir.graph import Graph, Value
from qcc.sim.interpreter import run_graph_all
from qcc.sim import qmn as _simulator  # noqa: F401  registers the q.range kernel

DEFAULT_BINS = 2048
_MIN_EXP = -160  # range exponent of an all-zero tensor (any real data widens it)
METHODS = ("minmax", "percentile", "entropy", "mse")

__all__ = ["TensorStats", "compute_range", "collect_stats", "load_act_max", "METHODS",
           "CalibrationData", "iter_calibration_batches", "describe_formats", "graph_values"]


class TensorStats:
    """Mergeable statistics of one tensor: min, max, count and histograms (see module doc)."""

    def __init__(self, bins: int = DEFAULT_BINS, name: str = ""):
        if bins < 2 or bins & (bins - 1):
            raise InputError(f"histogram bins must be a power of two >= 2, got {bins}")
        self.bins, self.name = bins, name
        self.exponent: Optional[int] = None  # the histograms cover [0, 2^exponent)
        self.pos = np.zeros(bins, np.int64)
        self.neg = np.zeros(bins, np.int64)
        self.min, self.max, self.count = math.inf, -math.inf, 0

    @property
    def width(self) -> float:
        return 2.0 ** self.exponent / self.bins if self.exponent is not None else 0.0

    @property
    def abs_hist(self) -> np.ndarray:
        return self.pos + self.neg

    @property
    def abs_max(self) -> float:
        return max(-self.min, self.max) if self.count else 0.0

    def _grow(self, exponent: int):
        if self.exponent is not None and exponent <= self.exponent:
            return
        if self.exponent is not None:
            d = exponent - self.exponent
            for h in (self.pos, self.neg):
                merged = np.zeros_like(h)
                if d >= int(math.log2(self.bins)):
                    merged[0] = h.sum()
                else:
                    part = h.reshape(self.bins >> d, 1 << d).sum(axis=1)
                    merged[:part.size] = part
                h[:] = merged
        self.exponent = exponent

    def update(self, x) -> "TensorStats":
        x = np.asarray(x, dtype=np.float64).ravel()
        if x.size == 0:
            return self
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise InputError(f"tensor '{self.name}' holds NaN or infinite values on the calibration data")
        m = max(-lo, hi)
        self._grow(max(math.frexp(m)[1], _MIN_EXP) if m > 0 else _MIN_EXP)
        scale = 2.0 ** (int(math.log2(self.bins)) - self.exponent)  # exact: a power of two
        neg = x < 0
        self.pos += np.bincount((x[~neg] * scale).astype(np.int64), minlength=self.bins)
        self.neg += np.bincount((-x[neg] * scale).astype(np.int64), minlength=self.bins)
        self.min, self.max, self.count = min(self.min, lo), max(self.max, hi), self.count + x.size
        return self

    def merge(self, other: "TensorStats") -> "TensorStats":
        """Add ``other``'s data to these statistics (in place; returns self)."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge statistics with {other.bins} and {self.bins} bins")
        if other.count == 0:
            return self
        o = other.copy()
        if self.exponent is None or o.exponent > self.exponent:
            self._grow(o.exponent)
        else:
            o._grow(self.exponent)
        self.pos += o.pos
        self.neg += o.neg
        self.min, self.max, self.count = min(self.min, o.min), max(self.max, o.max), self.count + o.count
        return self

    def copy(self) -> "TensorStats":
        c = TensorStats(self.bins, self.name)
        c.exponent, c.pos, c.neg = self.exponent, self.pos.copy(), self.neg.copy()
        c.min, c.max, c.count = self.min, self.max, self.count
        return c

    def __eq__(self, other) -> bool:
        return (isinstance(other, TensorStats) and self.bins == other.bins and self.exponent == other.exponent
                and self.count == other.count and self.min == other.min and self.max == other.max
                and np.array_equal(self.pos, other.pos) and np.array_equal(self.neg, other.neg))

    def __repr__(self) -> str:
        return f"<TensorStats {self.name!r} n={self.count} min={self.min} max={self.max} 2^{self.exponent}>"


# ---------------------------------------------------------------- range methods
def _clip(stats: TensorStats, t: float) -> Tuple[float, float]:
    return max(stats.min, -t), min(stats.max, t)


def _quantile(hist: np.ndarray, q: float, start: float, width: float) -> float:
    """The q-quantile (0..1) of a histogram whose bin i covers start + [i, i+1) * width."""
    cum = np.cumsum(hist)
    target = q * cum[-1]
    i = int(np.searchsorted(cum, target, side="left"))
    i = min(i, hist.size - 1)
    before = cum[i - 1] if i else 0
    frac = (target - before) / hist[i] if hist[i] else 1.0
    return start + (i + frac) * width


def _percentile(stats: TensorStats, p: float = 99.99, symmetric: bool = True) -> Tuple[float, float]:
    if not 0 < p <= 100:
        raise InputError(f"percentile p must be in (0, 100], got {p}")
    w = stats.width
    if symmetric:
        return _clip(stats, min(_quantile(stats.abs_hist, p / 100, 0.0, w), stats.abs_max))
    signed = np.concatenate([stats.neg[::-1], stats.pos])  # bins from -2^k to 2^k
    start = -stats.bins * w
    lo = _quantile(signed, 1 - p / 100, start, w)
    hi = _quantile(signed, p / 100, start, w)
    return max(stats.min, min(lo, stats.max)), min(stats.max, max(hi, stats.min))


def _trimmed_abs(stats: TensorStats) -> np.ndarray:
    h = stats.abs_hist
    nz = np.flatnonzero(h)
    return h[:nz[-1] + 1] if nz.size else h[:1]


def _smooth(p: np.ndarray, eps: float = 1e-4) -> Optional[np.ndarray]:
    """Give empty bins eps, taken evenly from the others (MXNet's _smooth_distribution)."""
    zero = p == 0
    nonzero = p.size - int(zero.sum())
    if nonzero == 0:
        return None
    out = p.astype(np.float64) + eps * zero - (eps * zero.sum() / nonzero) * ~zero
    return None if (out <= 0).any() else out / out.sum()


def _levels(bits: int, levels: Optional[int]) -> int:
    if levels is not None:
        return int(levels)
    if not 2 <= bits <= 32:
        raise InputError(f"bits must be between 2 and 32, got {bits}")
    return 1 << (bits - 1)


def _entropy(stats: TensorStats, bits: int = 8, levels: Optional[int] = None) -> Tuple[float, float]:
    levels = _levels(bits, levels)
    h = _trimmed_abs(stats).astype(np.float64)
    n = h.size
    if levels >= n:
        return stats.min, stats.max
    best_kl, best_i = math.inf, n
    # Below the median of |x| most values fold into the clip bin and P and Q
    # both collapse onto it: KL -> 0 for a useless range (data far from zero,
    # e.g. uniform on [3, 4]). Such candidates are skipped.
    first = max(levels, int(np.searchsorted(np.cumsum(h), h.sum() / 2, side="left")) + 1)
    for i in range(first, n + 1):
        p = h[:i].copy()
        p[-1] += h[i:].sum()
        nonzero = p != 0
        merged = i // levels
        group = np.minimum(np.arange(i) // merged, levels - 1)  # the last group takes the rest
        sums = np.bincount(group, weights=h[:i], minlength=levels)
        counts = np.bincount(group, weights=nonzero, minlength=levels)
        q = np.where(nonzero, sums[group] / np.maximum(counts[group], 1), 0.0)
        ps, qs = _smooth(p), _smooth(q)
        if ps is None or qs is None:
            continue
        kl = float(np.sum(ps * np.log(ps / qs)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return _clip(stats, min(best_i * stats.width, stats.abs_max))


def _mse(stats: TensorStats, bits: int = 8) -> Tuple[float, float]:
    qmax = _levels(bits, None) - 1
    h = _trimmed_abs(stats).astype(np.float64)
    w = stats.width
    centres = (np.arange(h.size) + 0.5) * w
    t = (np.arange(h.size) + 1) * w  # candidate j keeps bins [0, j]
    # Suffix sums over the clipped bins i > j: sum h, h*c, h*c^2.
    def tail(a):
        s = np.cumsum(a[::-1])[::-1]
        return np.append(s[1:], 0.0)
    s0, s1, s2 = tail(h), tail(h * centres), tail(h * centres ** 2)
    inside = h.sum() - s0
    cost = (t / qmax) ** 2 / 12 * inside + (s2 - 2 * t * s1 + t * t * s0)
    return _clip(stats, min(float(t[int(np.argmin(cost))]), stats.abs_max))


def compute_range(stats: TensorStats, method: str = "minmax", **opts) -> Tuple[float, float]:
    """``(lo, hi)`` for one tensor by ``method`` (minmax, percentile, entropy, mse); see module doc."""
    funcs = {"minmax": lambda s: (s.min, s.max), "percentile": _percentile, "entropy": _entropy, "mse": _mse}
    if method not in funcs:
        raise InputError(f"unknown calibration method '{method}'; choose one of {', '.join(METHODS)}")
    if stats.count == 0:
        raise InputError(f"no calibration data reached tensor '{stats.name}'")
    try:
        lo, hi = funcs[method](stats, **opts)
    except TypeError as e:
        raise InputError(f"bad option for calibration method '{method}': {e}") from None
    return float(lo), float(hi)


# ---------------------------------------------------------------- collection
def graph_values(graph: Graph) -> List[Value]:
    """Every value in a deterministic order (inputs, then op results in op order)."""
    return list(graph.inputs) + [r for op in graph.ops for r in op.results]


_WORKER: Dict[str, object] = {}


def _worker_init(graph: Graph, indices: Sequence[int], bins: int):
    values = graph_values(graph)
    _WORKER.update(graph=graph, values=[values[i] for i in indices], bins=bins)


def _batch_stats(batch: Mapping[str, np.ndarray]) -> List[TensorStats]:
    graph, values, bins = _WORKER["graph"], _WORKER["values"], _WORKER["bins"]
    stats = [TensorStats(bins, v.name or (v.producer.name if v.producer else "")) for v in values]
    n = len(next(iter(batch.values())))
    for i in range(n):
        env = run_graph_all(graph, {k: a[i] for k, a in batch.items()})
        for s, v in zip(stats, values):
            s.update(env[v])
    return stats


class _Progress:
    """A carriage-return sample counter on stderr, shown only on a terminal."""

    def __init__(self, total: int, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.done = total, 0
        self.on = bool(getattr(self.stream, "isatty", lambda: False)())

    def add(self, k: int):
        self.done += k
        if self.on:
            self.stream.write(f"\rcalibrate: {self.done}/{self.total} samples")
            self.stream.flush()

    def close(self):
        if self.on:
            self.stream.write("\n")
            self.stream.flush()


def collect_stats(graph: Graph, data, values: Sequence[Value], *, batch_size: int = 32, jobs: int = 1,
                  bins: int = DEFAULT_BINS, progress_stream=None) -> List[TensorStats]:
    """Run the float graph on every calibration sample; statistics of ``values``, in order.

    ``data`` is a path or a ``CalibrationData``. With ``jobs > 1`` batches run
    in that many processes; the merged statistics equal those of ``jobs=1``.
    """
    data = data if isinstance(data, CalibrationData) else CalibrationData(data, graph)
    index = {id(v): i for i, v in enumerate(graph_values(graph))}
    indices = [index[id(v)] for v in values]
    total = [TensorStats(bins, v.name or (v.producer.name if v.producer else "")) for v in values]
    progress = _Progress(data.num_samples, progress_stream)

    def absorb(batch_n: int, stats: List[TensorStats]):
        for t, s in zip(total, stats):
            t.merge(s)
        progress.add(batch_n)

    try:
        if jobs <= 1:
            _worker_init(graph, indices, bins)
            for batch in data.batches(batch_size):
                absorb(len(next(iter(batch.values()))), _batch_stats(batch))
        else:
            with ProcessPoolExecutor(jobs, initializer=_worker_init, initargs=(graph, indices, bins)) as pool:
                pending: List = []
                for batch in data.batches(batch_size):
                    pending.append((len(next(iter(batch.values()))), pool.submit(_batch_stats, batch)))
                    while len(pending) > 2 * jobs:  # bounded: memory stays a few batches
                        k, fut = pending.pop(0)
                        absorb(k, fut.result())
                for k, fut in pending:
                    absorb(k, fut.result())
    finally:
        _WORKER.clear()
        progress.close()
    return total


# ---------------------------------------------------------------- overrides
def load_act_max(spec) -> Dict[str, float]:
    """Per-tensor range overrides ``{name: M}`` (range [-M, M]).

    ``spec`` is a JSON file path (``{"conv1": 32, ...}``), a ``NAME=M`` string,
    a list of such strings (``--act-max conv1=32 --act-max relu2=8``), a
    mapping, or None.
    """
    import json
    from pathlib import Path
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        items: Iterable = spec.items()
        where = "act-max mapping"
    elif isinstance(spec, (str, Path)) and str(spec).endswith(".json"):
        try:
            loaded = json.loads(Path(spec).read_text())
        except OSError as e:
            raise InputError(f"cannot read act-max file '{spec}': {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise InputError(f"act-max file '{spec}':{e.lineno}:{e.colno}: {e.msg}") from None
        if not isinstance(loaded, dict):
            raise InputError(f"act-max file '{spec}' must hold a JSON object {{\"name\": max, ...}}")
        items, where = loaded.items(), f"act-max file '{spec}'"
    else:
        entries = [spec] if isinstance(spec, str) else list(spec)
        items = []
        for e in entries:
            if isinstance(e, str) and e.endswith(".json"):
                items.extend(load_act_max(e).items())
                continue
            if not isinstance(e, str) or e.count("=") != 1:
                raise InputError(f"--act-max entry {e!r} must be written NAME=MAX with one '=' (e.g. conv1=32); "
                                 f"a tensor name holding '=' goes in a .json file")
            name, value = e.rsplit("=", 1)
            items.append((name.strip(), value.strip()))
        where = "--act-max"
    out: Dict[str, float] = {}
    for name, value in items:
        try:
            m = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{where}: max for '{name}' must be a number, got {value!r}") from None
        if not (m > 0 and math.isfinite(m)):
            raise InputError(f"{where}: max for '{name}' must be positive and finite, got {value!r}")
        out[str(name)] = m
    return out
