"""``--kernels cmsis-nn``: the affine int8 ``s8.*`` layers call the real CMSIS-NN s8 API.

Instead of qcc's own kernels (``layers_s8.py``) each supported layer becomes a
call into Arm's library (the Makefile builds it from ``CMSIS_NN_DIR``):

    s8.conv2d (not depthwise)  arm_convolve_wrapper_s8          filter [Cout, KH, KW, Cin/group]
    s8.conv2d (depthwise)      arm_depthwise_conv_wrapper_s8    filter [1, KH, KW, Cout], one call per batch
    s8.dense                   arm_fully_connected_s8 (one multiplier) / _per_channel_s8
    s8.add (same shapes)       arm_elementwise_add_s8
    s8.mul (same shapes)       arm_elementwise_mul_s8
    s8.avgpool / s8.maxpool    arm_avgpool_s8 / arm_max_pool_s8
    s8.softmax                 arm_softmax_s8

The arithmetic is the same contract (qcc/ir/ops/qnn_s8.py is TFLite Micro's,
which is CMSIS-NN's), so the outputs are bit-exact with the simulator. The
library's conventions: ``input_offset = -input_zp``, ``output_offset =
+output_zp``, dims ``{n, h, w, c}``, tiles ``{w, h}``, only the top/left pads
(the output size bounds the window), per-channel multipliers and shifts as
int32 arrays in flash. Layers the library cannot run with this contract stay
on qcc's kernels, with a warning: single rounding (CMSIS-NN picks the rounding
for the whole library at build time), ``s8.requantize`` (no s8 -> s8
requantize in the API) and broadcasting adds.

Scratch buffers. The library asks for per-call scratch through its
``*_get_buffer_size`` functions, whose result depends on the core's features
(none / DSP / MVE) and on the compiler. qcc reproduces those formulas here
at code-generation time (``scratch_bytes``; gcc's values, the compiler the
Makefile uses), so the arena size in ``NAME.h`` is exact and static: one
scratch region, the largest layer's need, sits after the memory plan's
tensors (a scratch buffer is only live during its own call). Every layer that
takes scratch also asks the library at run time and returns
``ARM_CMSIS_NN_ARG_ERROR`` instead of calling it when the region is too small
(a different CMSIS-NN release or compiler), so a mismatch is an error code
from ``NAME_invoke``/``NAME_run`` and never a buffer overrun; the check costs
a few dozen instructions per layer. On MVE cores the fully connected kernels
read precomputed kernel sums (``arm_vector_sum_s8``: ``bias + input_offset *
sum(w)``) from ``ctx.buf``; qcc folds them at compile time into a flash table.

CMSIS-NN layers never run in place (the library may read its input after
writing output bytes); ``generate.py`` keeps them out of place.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from qcc.errors import UnsupportedModelError
from qcc.ir.graph import Op

from .layers_s8 import S8_HANDLED_ATTRS

KERNELS = ("qcc", "cmsis-nn")
OPS = frozenset({"s8.conv2d", "s8.dense", "s8.add", "s8.mul", "s8.avgpool", "s8.maxpool", "s8.softmax"})
CH_IN_BLOCK_MVE = 124           # arm_nnsupportfunctions.h
DW_ONE_IN_CH_THRESHOLD = 1      # CONVERT_DW_CONV_WITH_ONE_INPUT_CH_AND_OUTPUT_CH_ABOVE_THRESHOLD (gcc)
SCRATCH_ALIGN = 8


def features(target) -> str:
    """'mve', 'dsp' or 'none': the CMSIS-NN code paths compiled for ``target`` (ARM_MATH_MVEI / ARM_MATH_DSP)."""
    if target.name == "cortex-m55":
        return "mve"
    return "dsp" if target.has_dsp else "none"


# ------------------------------------------------------------------ get_buffer_size formulas (CMSIS-NN, gcc)
def conv_s8_buffer(feat: str, c: int, kh: int, kw: int) -> int:
    """arm_convolve_s8_get_buffer_size: the im2col buffer."""
    if feat == "mve":
        return 4 * ((c * kw * kh + 15) // 16) * 16
    cols = kw * kh * c
    return 2 * (cols + (-cols) % 4) * 2


def conv_wrapper_buffer(feat: str, in_dims, filt, out_dims, stride, pad, dil) -> int:
    """arm_convolve_wrapper_s8_get_buffer_size; dims (n, h, w, c), tiles (w, h)."""
    _, ih, iw, ic = in_dims
    _, kh, kw, kc = filt
    ow = out_dims[2]
    if pad == (0, 0) and kh == 1 and kw == 1 and dil == (1, 1) and ic == kc:
        return 0  # 1x1: arm_convolve_1x1_s8(_fast) needs none with gcc
    if ih == 1 and dil[0] == 1 and kh == 1 and (stride[0] * ic) % 4 == 0 and ic == kc:
        if feat != "mve":
            return conv_s8_buffer(feat, ic, kh, kw)
        # arm_convolve_1_x_n_s8_get_buffer_size_mve
        pad_x, stride_x = pad[0], stride[0]
        total_pad = (ow - 1) * stride_x + kw - iw
        asym = total_pad % 2
        right = max(1, (pad_x + asym + stride_x - 1) // stride_x) if pad_x + asym != 0 else 0
        left = max(1, (pad_x + stride_x - 1) // stride_x) if pad_x != 0 else 0
        if right + max(ow - (right + left), 0) + left != ow:
            return conv_s8_buffer(feat, ic, kh, kw)
        pad_left = pad_x * ic
        pad_right = right * ic if asym else pad_left
        left_elems = kw * ic
        return max(left_elems + pad_left, left_elems - ic + pad_right)
    return conv_s8_buffer(feat, ic, kh, kw)


def depthwise_wrapper_buffer(feat: str, in_dims, filt, out_dims, stride, pad, dil) -> int:
    """arm_depthwise_conv_wrapper_s8_get_buffer_size; filt is (1, KH, KW, Cout)."""
    n, _, _, ic = in_dims
    _, kh, kw, cout = filt
    if feat == "mve" and ic == 1 and out_dims[3] > DW_ONE_IN_CH_THRESHOLD:
        conv = conv_wrapper_buffer(feat, in_dims, (cout, kh, kw, 1), out_dims, stride, pad, dil)
        return conv + cout * kh * kw
    if ic == out_dims[3] and n == 1 and dil == (1, 1):
        if feat != "mve" and kh == 3 and kw == 3 and pad[0] <= 1 and pad[1] <= 1:
            return 0  # arm_depthwise_conv_3x3_s8
        if feat == "mve":
            return 4 * CH_IN_BLOCK_MVE * kw * kh
        return ic * kw * kh * 2 if feat == "dsp" else 0
    return 0


def avgpool_buffer(feat: str, c: int) -> int:
    """arm_avgpool_s8_get_buffer_size."""
    return 4 * c if feat == "dsp" else 0


# ------------------------------------------------------------------ contexts
def _wrap32(v) -> np.ndarray:
    return ((np.asarray(v, np.int64) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def fallback_reason(op: Op) -> Optional[str]:
    """Why ``op`` stays on qcc's kernel with --kernels cmsis-nn (None: CMSIS-NN runs it)."""
    if op.opname in ("s8.lstm", "s8.gru"):
        return ("not wired to arm_lstm_unidirectional_s8 (qcc's kernel computes the same numbers)"
                if op.opname == "s8.lstm" else "CMSIS-NN has no GRU kernel")
    if op.opname not in OPS:
        return None if not op.opname.startswith("s8.") else f"CMSIS-NN has no {op.opname} kernel"
    if op.result.type.dtype == "i16":
        return "int16 activations (16x8): qcc's kernels run them (no call into CMSIS-NN's *_s16 functions)"
    if op.attrs.get("rounding", "double") != "double":
        return "single rounding (CMSIS-NN selects it for the whole library at build time)"
    if op.attrs.get("weight_zp", 0):
        return "a weight zero point (qcc's dense kernel takes it; the CMSIS-NN call here does not)"
    if op.opname in ("s8.add", "s8.mul") and any(v.type.size != op.result.type.size for v in op.operands):
        kind = op.opname.split(".")[1]
        return f"a broadcasting {kind} (arm_elementwise_{kind}_s8 takes equal shapes)"
    return None


class CmsisNNKernels:
    """Builds the ``cmsisnn_*`` contexts of one model and sizes its shared scratch region."""

    def __init__(self, builder, target):
        self.builder = builder
        self.name = builder.prefix
        self.NAME = builder.prefix.upper()
        self.features = features(target)
        self.scratch = 0          # bytes: the largest layer's need
        self.scratch_offset = 0   # set by place_scratch
        self.warnings = []

    def handles(self, op: Op) -> bool:
        if op.opname not in OPS and not op.opname.startswith("s8."):
            return False
        reason = fallback_reason(op)
        if reason:
            self.warnings.append(f"--kernels cmsis-nn: {op.describe()} runs on qcc's kernel: {reason}")
            return False
        return True

    def build(self, index: int, op: Op, ctx: dict) -> dict:
        """Fill ``ctx`` (kind/fn/comment from the caller) with a cmsisnn_* kernel's constants."""
        unknown = sorted(set(op.attrs) - S8_HANDLED_ATTRS[op.opname])
        if unknown:
            raise UnsupportedModelError(f"{op.describe()}: the cmsis backend does not implement attribute(s) "
                                        f"{', '.join(unknown)}")
        ctx.update(name=self.name, NAME=self.NAME, status=True, scratch=0)
        getattr(self, "_" + op.opname.split(".")[1])(op, ctx)
        ctx["kind"] = "cmsisnn_" + ctx["kind"]
        self.scratch = max(self.scratch, ctx["scratch"])
        return ctx

    def place_scratch(self, plan) -> None:
        """Append the scratch region to the arena (after every planned tensor)."""
        if self.scratch:
            self.scratch_offset = -(-plan.arena_size // SCRATCH_ALIGN) * SCRATCH_ALIGN
            plan.arena_size = self.scratch_offset + self.scratch

    # ---------------------------------------------------------------- helpers
    def _const(self, fn: str, what: str, dtype: str, values, comment: str) -> str:
        return self.builder.add_const(f"{self.name}_{fn}_{what}", dtype, values, comment)

    def _quant(self, op: Op, fn: str, channels: int, ctx: dict):
        a = op.attrs
        mult = np.broadcast_to(np.asarray(a["multiplier"], np.int64), (channels,))
        shift = np.broadcast_to(np.asarray(a["shift"], np.int64), (channels,))
        ctx.update(mult=self._const(fn, "mult", "i32", mult, f"{op.name} requantization multipliers"),
                   shift=self._const(fn, "shift", "i32", shift, f"{op.name} requantization shifts"),
                   in_off=-a["input_zp"], out_off=a["output_zp"], lo=a["act_min"], hi=a["act_max"])

    def _bias(self, op: Op, fn: str, cout: int) -> np.ndarray:
        return (op.operands[2].constant().astype(np.int64) if len(op.operands) > 2
                else np.zeros(cout, np.int64))

    # ---------------------------------------------------------------- ops
    def _conv2d(self, op: Op, ctx: dict):
        fn = ctx["fn"]
        a = op.attrs
        n, h, w, c = op.operands[0].shape
        cout, kh, kw, cg = op.operands[1].shape
        _, oh, ow, _ = op.result.shape
        sh, sw = a["strides"]
        dh, dw = a["dilations"]
        pt, pl = a["pads"][0], a["pads"][1]
        wts = np.asarray(op.operands[1].constant(), np.int8)
        depthwise = cg == 1 and a["group"] == c
        self._quant(op, fn, cout, ctx)
        ctx.update(n=n, h=h, w_=w, c=c, oh=oh, ow=ow, cout=cout, kh=kh, kw=kw, cg=cg, sh=sh, sw=sw, dh=dh, dw=dw,
                   pt=pt, pl=pl, depthwise=depthwise, kind="conv2d",
                   bias=self._const(fn, "b", "i32", self._bias(op, fn, cout), f"{op.name} bias"))
        stride, pad, dil = (sw, sh), (pl, pt), (dw, dh)
        if depthwise:
            # [Cout, KH, KW, 1] -> [1, KH, KW, Cout]; the library runs one batch per call.
            wt = np.ascontiguousarray(wts.reshape(cout, kh * kw).T)
            ctx.update(w=self._const(fn, "w", "i8", wt, f"{op.name} depthwise weights [1,KH,KW,Cout]"),
                       mult_ch=cout // c,
                       scratch=depthwise_wrapper_buffer(self.features, (1, h, w, c), (1, kh, kw, cout),
                                                        (1, oh, ow, cout), stride, pad, dil))
        else:
            ctx.update(w=self._const(fn, "w", "i8", wts, f"{op.name} weights {list(wts.shape)}"),
                       scratch=conv_wrapper_buffer(self.features, (n, h, w, c), (cout, kh, kw, cg),
                                                   (n, oh, ow, cout), stride, pad, dil))

    def _dense(self, op: Op, ctx: dict):
        fn = ctx["fn"]
        nout, k = op.operands[1].shape
        wts = np.asarray(op.operands[1].constant(), np.int8)
        bias = self._bias(op, fn, nout)
        per_channel = len(op.attrs["multiplier"]) > 1
        if per_channel:
            self._quant(op, fn, nout, ctx)
        else:  # per tensor: literals, no tables
            a = op.attrs
            ctx.update(in_off=-a["input_zp"], out_off=a["output_zp"], lo=a["act_min"], hi=a["act_max"])
        ctx.update(kind="dense", m=op.operands[0].type.size // k, k=k, nout=nout, per_channel=per_channel,
                   mult0=int(op.attrs["multiplier"][0]), shift0=int(op.attrs["shift"][0]),
                   w=self._const(fn, "w", "i8", wts, f"{op.name} weights {list(wts.shape)}"),
                   bias=self._const(fn, "b", "i32", bias, f"{op.name} bias"), kernel_sum=None)
        if self.features == "mve":
            # arm_vector_sum_s8(lhs_offset = input_offset, rhs_offset = 0): read from ctx.buf on MVE.
            sums = _wrap32(bias + ctx["in_off"] * wts.astype(np.int64).sum(axis=1))
            ctx["kernel_sum"] = self._const(fn, "ksum", "i32", sums, f"{op.name} bias + input_offset * sum(w)")

    def _add(self, op: Op, ctx: dict):
        a = op.attrs
        ctx.update(kind="add", size=op.result.type.size, left_shift=a["left_shift"],
                   off_a=-a["input_zp"][0], off_b=-a["input_zp"][1],
                   mult_a=a["input_multiplier"][0], shift_a=a["input_shift"][0],
                   mult_b=a["input_multiplier"][1], shift_b=a["input_shift"][1],
                   mult=a["multiplier"][0], shift=a["shift"][0], out_off=a["output_zp"],
                   lo=a["act_min"], hi=a["act_max"])

    def _mul(self, op: Op, ctx: dict):
        a = op.attrs
        ctx.update(kind="mul", size=op.result.type.size, off_a=-a["input_zp"][0], off_b=-a["input_zp"][1],
                   mult=a["multiplier"][0], shift=a["shift"][0], out_off=a["output_zp"], lo=a["act_min"],
                   hi=a["act_max"])

    def _pool(self, op: Op, ctx: dict, kind: str):
        n, h, w, c = op.operands[0].shape
        _, oh, ow, _ = op.result.shape
        kh, kw = op.attrs["kernel"]
        sh, sw = op.attrs["strides"]
        ctx.update(kind=kind, n=n, h=h, w_=w, c=c, oh=oh, ow=ow, kh=kh, kw=kw, sh=sh, sw=sw,
                   pt=op.attrs["pads"][0], pl=op.attrs["pads"][1], lo=op.attrs["act_min"], hi=op.attrs["act_max"],
                   scratch=avgpool_buffer(self.features, c) if kind == "avgpool" else 0)

    def _avgpool(self, op: Op, ctx: dict):
        self._pool(op, ctx, "avgpool")

    def _maxpool(self, op: Op, ctx: dict):
        self._pool(op, ctx, "maxpool")

    def _softmax(self, op: Op, ctx: dict):
        x = op.operands[0]
        cols = x.shape[-1] if x.shape else 1
        a = op.attrs
        ctx.update(kind="softmax", rows=x.type.size // cols, cols=cols, mult=a["multiplier"], shift=a["shift"],
                   diff_min=a["diff_min"])
