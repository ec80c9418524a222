"""Tensor types and quantization parameters of the IR.

A value's type is ``TensorType(shape, dtype, quant)``. ``dtype`` is the
storage element type (``f32``, ``i8``, ``i16``, ``i32``, ``i64``, ``bool``);
``quant`` says how stored integers map to reals:

* ``UniformQuant(scale, zero_point)``: real = scale * (q - zero_point)
  (MLIR ``!q.uniform<i8:f32, 0.0235:-3>``).
* ``PerAxisQuant(axis, scales, zero_points)``: the same, one pair per index
  along ``axis`` (``!q.uniform<i8:f32:0, {0.002:0, 0.0017:0}>``).
* ``FixedPoint(frac_bits)``: Qm.n, real = q * 2**-n, zero point 0
  (``!q.fixed<i8, 4>`` is Q3.4).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

import numpy as np

# Storage types the IR knows, with their numpy equivalents.
DTYPES = {
    "f32": np.float32,
    "f64": np.float64,
    "i8": np.int8,
    "i16": np.int16,
    "i32": np.int32,
    "i64": np.int64,
    "u8": np.uint8,
    "u16": np.uint16,
    "bool": np.bool_,
}
INT_DTYPES = ("i8", "i16", "i32", "i64", "u8", "u16")


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype of an IR storage type name."""
    try:
        return np.dtype(DTYPES[dtype])
    except KeyError:
        raise ValueError(f"unknown element type '{dtype}'") from None


def dtype_of_numpy(dt) -> str:
    """The IR storage type name of a numpy dtype."""
    dt = np.dtype(dt)
    for name, np_type in DTYPES.items():
        if np.dtype(np_type) == dt:
            return name
    raise ValueError(f"numpy dtype {dt} has no IR element type")


def storage_range(dtype: str) -> Tuple[int, int]:
    """Smallest and largest value of an integer storage type."""
    info = np.iinfo(numpy_dtype(dtype))
    return int(info.min), int(info.max)


@dataclass(frozen=True)
class UniformQuant:
    """Affine quantization with one scale and zero point for the tensor."""

    scale: float
    zero_point: int = 0

    def __post_init__(self):
        if not (self.scale > 0 and np.isfinite(self.scale)):
            raise ValueError(f"quantization scale must be positive and finite, got {self.scale}")


@dataclass(frozen=True)
class PerAxisQuant:
    """Affine quantization with one scale and zero point per index along ``axis``."""

    axis: int
    scales: Tuple[float, ...]
    zero_points: Tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        object.__setattr__(self, "zero_points", tuple(int(z) for z in self.zero_points))
        if len(self.scales) != len(self.zero_points):
            raise ValueError("per-axis quantization needs as many zero points as scales")
        if not all(s > 0 and np.isfinite(s) for s in self.scales):
            raise ValueError("per-axis quantization scales must be positive and finite")


@dataclass(frozen=True)
class FixedPoint:
    """Qm.n fixed point: real = q * 2**-frac_bits."""

    frac_bits: int

    @property
    def scale(self) -> float:
        return 2.0 ** -self.frac_bits

    @property
    def zero_point(self) -> int:
        return 0


Quant = Union[UniformQuant, PerAxisQuant, FixedPoint]


@dataclass(frozen=True)
class TensorType:
    """Shape, storage element type and optional quantization of a value."""

    shape: Tuple[int, ...]
    dtype: str = "f32"
    quant: Optional[Quant] = field(default=None)

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown element type '{self.dtype}'")
        if any(d < 0 for d in self.shape):
            raise ValueError(f"negative dimension in shape {self.shape}")
        if self.quant is not None and self.dtype not in INT_DTYPES:
            raise ValueError(f"quantized type needs integer storage, got '{self.dtype}'")
        if isinstance(self.quant, PerAxisQuant):
            if not 0 <= self.quant.axis < max(len(self.shape), 1):
                raise ValueError(f"quantization axis {self.quant.axis} out of range for shape {self.shape}")
            if self.shape and len(self.quant.scales) != self.shape[self.quant.axis]:
                raise ValueError(
                    f"per-axis quantization has {len(self.quant.scales)} scales but "
                    f"dimension {self.quant.axis} is {self.shape[self.quant.axis]}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def np_dtype(self) -> np.dtype:
        return numpy_dtype(self.dtype)

    @property
    def is_float(self) -> bool:
        return self.dtype in ("f32", "f64")

    @property
    def is_quantized(self) -> bool:
        return self.quant is not None

    def with_shape(self, shape) -> "TensorType":
        return TensorType(tuple(shape), self.dtype, self.quant)

    def with_quant(self, dtype: str, quant: Optional[Quant]) -> "TensorType":
        return TensorType(self.shape, dtype, quant)

    def __str__(self) -> str:  # a readable form for messages; the printer owns the text IR
        return format_type(self)


# ---------------------------------------------------------------- text form (the printer and messages use it)
def format_float(x: float) -> str:
    """Shortest text that parses back to the same float64."""
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)


def format_quant(q, storage: str) -> str:
    if isinstance(q, UniformQuant):
        return f"!q.uniform<{storage}:f32, {format_float(q.scale)}:{q.zero_point}>"
    if isinstance(q, PerAxisQuant):
        pairs = ", ".join(f"{format_float(s)}:{z}" for s, z in zip(q.scales, q.zero_points))
        return f"!q.uniform<{storage}:f32:{q.axis}, {{{pairs}}}>"
    if isinstance(q, FixedPoint):
        return f"!q.fixed<{storage}, {q.frac_bits}>"
    raise TypeError(f"unknown quantization {q!r}")


def format_type(t: TensorType, aliases: Optional[Dict[str, str]] = None) -> str:
    shape = "".join(f"{d}x" for d in t.shape)
    if t.quant is None:
        elem = t.dtype
    else:
        elem = format_quant(t.quant, t.dtype)
        if aliases is not None and elem in aliases:
            elem = aliases[elem]
    return f"tensor<{shape}{elem}>"
