"""Template contexts of the affine int8 ``s8.*`` kernels (TFLite Micro / CMSIS-NN arithmetic).

The arithmetic is qcc/ir/ops/qnn_s8.py's, bit for bit (qcc.sim.s8 is the
contract); the C lives in ``templates/ops/s8_*.j2`` and the shared fixed-point
helpers in ``templates/ops/s8_common.j2``. Python only folds constants:

- Input zero point into the bias (conv and dense):
      sum((x - zp) * w) = sum(x * w) - zp * sum(w)
  so ``bias_fold[c] = bias[c] - zp * sum(w[c])`` and the inner loops are plain
  int8 dot products, blocked like the Qm.n kernels (``qcc_dot2x2_s8_s8``: 2
  pixels x 2 channels; dense 1 row x 2 channels). A window tap that falls into
  the padding contributes 0 to the true sum; the gemm path reads ``input_zp``
  for it from a constant row (``(zp - zp) * w = 0``, the folded bias holds the
  ``-zp * w``), the generic path adds ``zp * sum(w over the tap)`` back, and the
  depthwise path uses the raw bias with ``(x - zp) * w`` for windows the
  padding cuts. Everything is summed modulo 2^32 (unsigned), which is exact
  whenever the true accumulator fits int32, the s8 contract (the simulator
  checks it).
- Requantization: ``qcc_s8_requant_out`` (saturating SMMULR, two shifts) when
  every multiplier is in [2^30, 2^31) and every shift in [-21, -1], which gives
  the double-rounding int8 of ``qcc_s8_requant`` for every accumulator
  (s8_common.j2 has the argument); otherwise the general helpers.
- Output zero point into the clamp: ``clamp(r + zp, lo, hi)`` is computed as
  ``r < lo - zp ? lo : r > hi - zp ? hi : r + zp``, which cannot overflow.
- Depthwise weights ``[Cout, KH, KW, 1]`` are transposed to ``[KH, KW, Cout]``
  so the innermost loop runs over contiguous channels (int16, lanes permuted
  for SXTB16, with a channel multiplier of 1).
- ``--optimize speed`` on a core with SMLAD and no Helium (builder.packed): the
  gemm conv and dense weights are re-laid once, at compile time, as int16 pairs
  in int32 words in the lanes SXTB16 makes of an input word (``packed_weights``):
  ``word(c, k) = w[c][k] | w[c][k+2] << 16`` and ``w[c][k+1] | w[c][k+3] << 16``.
  A conv widens the windows of two output pixels once into a stack buffer
  (interleaved per 4 elements) and runs every channel pair over it with LDRD and
  SMLAD only (s8_conv2d.j2 gemm_col); dense widens each input word once per 4
  channels. 2x the conv/dense weight bytes for 22-35% fewer instructions on the
  MLPerf Tiny models. Depthwise convs run pixel pairs of wholly inside windows
  (``dw_pair``). ``--optimize size`` keeps int8 weights and the generic loops.
"""
from __future__ import annotations

from typing import List

import numpy as np

from qcc.errors import UnsupportedModelError
from qcc.ir.graph import Op
from qcc.sim.s8_recurrent import SIGMOID_TABLE
from qcc.sim.s8 import SOFTMAX16_EXP_LUT, SOFTMAX16_RECIP_LUT

_REQUANT = {"input_zp", "output_zp", "multiplier", "shift", "rounding", "act_min", "act_max"}
_WINDOW = {"kernel", "strides", "pads", "act_min", "act_max"}
# Every attribute each s8 kernel honours (an op carrying another one is refused).
S8_HANDLED_ATTRS = {
    "s8.conv2d": _REQUANT | {"strides", "pads", "dilations", "group"},
    "s8.dense": set(_REQUANT) | {"weight_zp"},
    "s8.add": {"input_zp", "output_zp", "left_shift", "input_multiplier", "input_shift", "multiplier", "shift",
               "rounding", "act_min", "act_max"},
    "s8.mul": {"input_zp", "output_zp", "multiplier", "shift", "rounding", "act_min", "act_max"},
    "s8.lut": {"table", "function"},
    "s8.requantize": set(_REQUANT),
    "s8.avgpool": set(_WINDOW),
    "s8.maxpool": set(_WINDOW),
    "s8.softmax": {"multiplier", "shift", "diff_min"},
}
_RECURRENT = {"hidden_size", "input_zp", "output_zp", "input_multiplier", "input_shift", "recurrent_multiplier",
              "recurrent_shift", "output_multiplier", "output_shift"}
S8_HANDLED_ATTRS["s8.lstm"] = _RECURRENT | {"cell_scale_power", "cell_clip", "forget_multiplier", "forget_shift",
                                            "input_to_cell_multiplier", "input_to_cell_shift",
                                            "peephole_multiplier", "peephole_shift"}
S8_HANDLED_ATTRS["s8.gru"] = _RECURRENT | {"linear_before_reset"}
S8_HANDLED_ATTRS["s8.sub"] = S8_HANDLED_ATTRS["s8.add"]
REQUANT_FN = {"double": "qcc_s8_requant", "single": "qcc_s8_requant_single"}
SOFTMAX_MAX_COLS = 4095  # sum of exp terms (each <= 2^19) must stay inside int32


def _wrap32(v: int) -> int:
    return ((int(v) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _per_channel(builder, fn: str, what: str, dtype: str, values: List[int], channels: int, index: str,
                 comment: str) -> str:
    """A literal when every channel shares the value, else a const table indexed by ``index``."""
    vals = np.broadcast_to(np.asarray(values, np.int64), (channels,))
    if np.all(vals == vals[0]):
        return str(int(vals[0]))
    return builder.add_const(f"{builder.prefix}_{fn}_{what}", dtype, vals, comment) + f"[{index}]"


def _epilogue(builder, op: Op, fn: str, channels: int, index: str) -> dict:
    """Requantization and clamp of conv/dense/requantize (multiplier/shift per tensor or channel).

    ``mult`` / ``shift`` are C expressions indexed by ``index``; ``mult_t`` / ``shift_t`` the bare table
    symbol (or literal) with ``*_tab`` telling which, for the blocked kernels that index by other names.
    ``requant`` drops the left-shift branch when no shift is positive (the usual multiplier < 1).
    """
    a = op.attrs
    zp = a["output_zp"]
    mult = _per_channel(builder, fn, "mult", "i32", a["multiplier"], channels, index,
                        f"{op.name} requantization multipliers")
    shift = _per_channel(builder, fn, "shift", "i8", a["shift"], channels, index, f"{op.name} requantization shifts")
    bare = lambda e: e[:-len(f"[{index}]")] if e.endswith(f"[{index}]") else e
    requant = REQUANT_FN[a["rounding"]]
    if a["rounding"] == "double" and max(np.ravel(a["shift"])) <= 0:
        requant = "qcc_s8_requant_rs"
    mults, shifts = np.ravel(a["multiplier"]), np.ravel(a["shift"])
    # qcc_s8_requant_out's conditions (s8_common.j2): one saturating SMMULR and shifts, same int8 outputs.
    fast = (a["rounding"] == "double" and mults.min() >= 1 << 30 and mults.max() < 1 << 31
            and shifts.max() <= -1 and shifts.min() >= -21)
    e1 = _per_channel(builder, fn, "e1", "i8", [-int(s_) - 1 for s_ in shifts], channels, index,
                      f"{op.name} requantization right shifts - 1") if fast else "0"
    return {"requant": requant, "mult": mult, "shift": shift, "ozp": zp, "fast": fast, "zp2p1": 2 * zp + 1,
            "e1_t": bare(e1), "e1_tab": e1 != bare(e1),
            "mult_t": bare(mult), "mult_tab": mult != bare(mult), "shift_t": bare(shift), "shift_tab": shift != bare(shift),
            "lo": a["act_min"], "hi": a["act_max"], "rlo": a["act_min"] - zp, "rhi": a["act_max"] - zp}


def _weights(builder, op: Op, fn: str, w: np.ndarray, fold_zp: int, weight_zp: int = 0, packed=None) -> dict:
    """Weight table and the bias with ``-zp * sum(w[c])`` folded in (int32, wrapped modulo 2^32).

    With a weight zero point (dense only) the bias also holds ``K * zp * weight_zp``:
    ``sum((x - zp)(w - wzp)) = sum(x w) - zp sum(w) - wzp sum(x) + K zp wzp``; the kernel
    subtracts ``wzp * sum(x)`` per row. ``packed`` = (channels a block, dot length): the table is
    ``packed_weights`` of the rows instead of the int8 weights.
    """
    cout = w.shape[0]
    if packed:
        wsym = builder.add_const(f"{builder.prefix}_{fn}_w", "i32", packed_weights(w.reshape(cout, -1), *packed),
                                 f"{op.name} weights {list(w.shape)}, {packed[0]}-channel blocks of SXTB16-lane "
                                 f"int16 pairs")
    else:
        wsym = builder.add_const(f"{builder.prefix}_{fn}_w", "i8", w, f"{op.name} weights {list(w.shape)}")
    b = op.operands[2].constant().astype(np.int64) if len(op.operands) > 2 else np.zeros(cout, np.int64)
    k = w.size // cout
    folded = b - fold_zp * w.reshape(cout, -1).astype(np.int64).sum(axis=1) + k * fold_zp * weight_zp
    bias = _per_channel(builder, fn, "b", "i32", [_wrap32(v) for v in folded], cout, "oc",
                        f"{op.name} bias - input_zp * sum(w)")
    builder.dots.add(("s8", "s8"))
    bare = bias[:-len("[oc]")] if bias.endswith("[oc]") else bias
    return {"w": wsym, "bias": bias, "bias_t": bare, "bias_tab": bias != bare, "dot": "qcc_dot_s8_s8"}


def is_s8_depthwise(op: Op) -> bool:
    """True when s8_conv2d.j2 runs ``op`` on a depthwise path (one input channel per group).

    Those paths store a pixel's Cout outputs together after reading its whole window
    (a pixel buffer when in place), which inplace.py's bound relies on.
    """
    return (op.opname == "s8.conv2d" and op.operands[0].type.dtype == "i8" and op.operands[1].shape[-1] == 1
            and op.attrs["group"] == op.operands[0].shape[-1])


def window_segments(count: int, stride: int, pad: int, taps: int, dil: int, size: int) -> List[tuple]:
    """Runs ``(o0, o1, k0, k1)`` of output positions ``o0 <= o < o1`` whose window taps ``k0 <= k < k1``
    fall inside an input of ``size`` (the depthwise kernels unroll each run with constant tap bounds)."""
    runs: List[tuple] = []
    for o in range(count):
        i0 = o * stride - pad
        inside = [k for k in range(taps) if 0 <= i0 + k * dil < size]
        k0, k1 = (inside[0], inside[-1] + 1) if inside else (0, 0)
        if runs and runs[-1][1] == o and runs[-1][2:] == (k0, k1):
            runs[-1] = (runs[-1][0], o + 1, k0, k1)
        else:
            runs.append((o, o + 1, k0, k1))
    return runs


# The im2col gemm path: a window row shorter than this many elements is too short for a row dot (its
# call and loop set-up cost more than its MACs), and the window pair buffer is kept within IM2COL_MAX_BYTES.
IM2COL_MAX_ROW = 16
IM2COL_MAX_BYTES = 256
# The two widened windows of gemm_col (--optimize speed): at most this many bytes of stack (two 3x3x128).
COL_MAX_BYTES = 4608


def im2col_length(kh: int, kw: int, cg: int, itemsize: int, flat: bool) -> int:
    """Window length KH*KW*Cin rounded up to 4 for the im2col gemm path, or 0 when that path is not used.

    A convolution with few input channels (window rows of a few elements: DS-CNN's 10x4 Cin=1, an RGB
    3x3) copies each output pixel pair's window into a stack buffer ``[2][Kp]`` (padding taps hold the
    padding value) and runs one 2x2 dot over the whole window instead of one tiny dot per window row.
    Weights are re-laid ``[Cout][Kp]`` with zeros past KH*KW*Cin, so the rounding adds nothing.
    """
    kp = -(-kh * kw * cg // 4) * 4
    if flat or kw * cg >= IM2COL_MAX_ROW or kh * kw == 1 or 2 * kp * itemsize > IM2COL_MAX_BYTES:
        return 0
    return kp


def padded_rows(w: np.ndarray, kp: int) -> np.ndarray:
    """Weights [Cout, KH, KW, Cin] as [Cout][kp], zero past KH*KW*Cin."""
    rows = np.asarray(w, np.int64).reshape(w.shape[0], -1)
    return np.pad(rows, ((0, 0), (0, kp - rows.shape[1])))


def packed_weights(rows: np.ndarray, block: int, seg: int) -> np.ndarray:
    """int8 rows [Cout][K] (K a multiple of 4) as int32 words for the packed dots (s8_common.j2).

    Channels go in blocks of ``block`` (the last one padded with zero rows); within a block, for each
    group of 4 elements k..k+3, each channel c of the block gives two words,
    ``w[c][k] + 2^16 * w[c][k+2]`` and ``w[c][k+1] + 2^16 * w[c][k+3]`` (low halfword unsigned): the lanes
    of SXTB16(x word) and SXTB16(x word ROR 8), so ``SMLAD(xe, word0) + SMLAD(xo, word1)`` is the
    4-element dot product. The words of a block follow the element order, so the element offset e of a
    window (a multiple of 4) is at word ``block * e / 2`` of the block: ``seg`` only checks that every
    dot the kernel runs starts on a group of 4.
    """
    rows = np.asarray(rows, np.int64)
    cout, k = rows.shape
    assert k % 4 == 0 and seg % 4 == 0 and k % seg == 0
    nb = -(-cout // block)
    full = np.zeros((nb * block, k), np.int64)
    full[:cout] = rows
    g = full.reshape(nb, block, k // 4, 4)                       # [block#, c, group, j]
    lo = np.stack([g[..., 0], g[..., 1]], axis=-1)               # [.., c, group, 2]: k, k+1
    hi = np.stack([g[..., 2], g[..., 3]], axis=-1)               # k+2, k+3
    words = (lo & 0xFFFF) + hi * 65536                           # int32 value (hi signed)
    return words.transpose(0, 2, 1, 3).reshape(-1)               # [block#, group, c, 2]


def _depthwise_weights(w: np.ndarray) -> np.ndarray:
    """[C,KH,KW,1] as int16 [KH*KW][C], each group of 4 channels stored as (c, c+2, c+1, c+3).

    Those are the lanes SXTB16 makes of an input word (bytes 0,2 and, rotated, 1,3),
    so one weight word pairs with each half of the widened input (as conv2d.j2's qnn path).
    """
    c = w.shape[0]
    taps = np.asarray(w, np.int64).reshape(c, -1).T.copy()          # [KH*KW, C]
    blocks = c // 4 * 4
    perm = np.arange(c)
    perm[:blocks] = np.arange(blocks) // 4 * 4 + np.tile([0, 2, 1, 3], blocks // 4)
    return taps[:, perm]


def _conv2d(builder, op: Op, fn: str) -> dict:
    a = op.attrs
    n, h, w_, c = op.operands[0].shape
    cout, kh, kw, cg = op.operands[1].shape
    _, oh, ow, _ = op.result.shape
    g = a["group"]
    sh, sw = a["strides"]
    dh, dw = a["dilations"]
    pt, pl, _, _ = a["pads"]
    zp = a["input_zp"]
    w = np.asarray(op.operands[1].constant(), np.int8)
    # Kernel shape (s8_conv2d.j2): "gemm" blocks 2 pixels x 2 output channels (ungrouped); "depthwise"
    # 4 channels of a pixel (channel multiplier 1); "dwmult" any channel multiplier; "generic" one output
    # at a time (other grouped convolutions).
    if g == 1:
        path = "gemm"
    elif is_s8_depthwise(op):
        path = "depthwise" if cout == c else "dwmult"
    else:
        path = "generic"
    flat = path == "gemm" and kh == kw == 1 and (sh, sw) == (1, 1) and not any(a["pads"])
    if flat:
        # A 1x1 stride-1 convolution is a matrix product over all pixels: one long row pairs them all.
        n, h, w_, oh, ow = 1, 1, n * h * w_, 1, n * h * w_
    kp = im2col_length(kh, kw, cg, 1, flat) if path == "gemm" else 0
    ctx = {"path": path, "n": n, "h": h, "w_": w_, "c": c, "oh": oh, "ow": ow, "cout": cout, "kh": kh, "kw": kw,
           "cg": cg, "cog": cout // g, "group": g, "sh": sh, "sw": sw, "dh": dh, "dw": dw, "pt": pt, "pl": pl,
           "izp": zp, "kp": kp, "xt": "int8_t", "xs": "s8", "ws": "s8",
           # Window taps leave the input only with padding (or a ragged last window).
           "check_y": pt > 0 or (oh - 1) * sh - pt + (kh - 1) * dh >= h,
           "check_x": pl > 0 or (ow - 1) * sw - pl + (kw - 1) * dw >= w_}
    ctx.update(_epilogue(builder, op, fn, cout, "oc"))
    b = op.operands[2].constant().astype(np.int64) if len(op.operands) > 2 else np.zeros(cout, np.int64)
    if path == "dwmult":
        # Channels innermost, weights [KH][KW][Cout], (x - input_zp) per tap (padding taps skipped).
        wt = np.ascontiguousarray(w.reshape(cout, kh * kw).T)
        wsym = builder.add_const(f"{builder.prefix}_{fn}_w", "i8", wt, f"{op.name} depthwise weights [KH,KW,Cout]")
        bias = builder.add_const(f"{builder.prefix}_{fn}_b", "i32", b, f"{op.name} bias")
        ctx.update(w=wsym, bias_table=bias, mult_ch=cout // c)
        return ctx
    if path == "depthwise":
        # A whole window: bias - zp * sum over taps of w[c] (folded), then plain x * w sums. A window cut by
        # the padding: the raw bias and (x - zp) * w over its inside taps (SSUB16 on the widened input).
        wsym = builder.add_const(f"{builder.prefix}_{fn}_w", "i16", _depthwise_weights(w),
                                 f"{op.name} depthwise weights [KH*KW][C], int16, lanes (c,c+2,c+1,c+3)")
        folded = b - zp * w.reshape(cout, -1).astype(np.int64).sum(axis=1)
        ctx.update(w=wsym, bias_t=builder.add_const(f"{builder.prefix}_{fn}_b", "i32", [_wrap32(v) for v in folded],
                                                    f"{op.name} bias - input_zp * sum(w)"),
                   zp2=(zp & 0xFFFF) | ((zp & 0xFFFF) << 16), bias_tab=True)
        # Runs of output columns with the same in-bounds taps: each is unrolled with constant bounds.
        ctx["col_segs"] = window_segments(ow, sw, pl, kw, dw, w_)
        # --optimize speed: pixel pairs of wholly inside windows share weight loads (s8_conv2d.j2 dw_pair).
        ctx["dw_pair"] = builder.packed and c % 4 == 0
        if ctx["check_x"] or ctx["check_y"]:
            ctx["raw_t"] = builder.add_const(f"{builder.prefix}_{fn}_braw", "i32", b, f"{op.name} bias")
        return ctx
    # --optimize speed on an SMLAD core: each pixel's window widened once into a stack buffer, 4 output
    # channels per pass over it on packed weights (s8_conv2d.j2 gemm_col).
    kcol = -(-kh * kw * cg // 4) * 4
    ctx["col"] = path == "gemm" and builder.packed and 4 * kcol <= COL_MAX_BYTES
    if ctx["col"]:
        ctx.update(kp=kcol, c4=cg % 4 == 0, zp2=(zp & 0xFFFF) | ((zp & 0xFFFF) << 16))
        ctx.update(_weights(builder, op, fn, padded_rows(w, kcol), zp, packed=(2, kcol)))
        return ctx
    ctx.update(_weights(builder, op, fn, padded_rows(w, kp) if kp else w, zp),
               # One contiguous dot over a whole window row when not grouped and not dilated.
               row_dot=g == 1 and dw == 1 and kw > 1, zrow=None)  # None: padding taps are skipped (zp = 0)
    if path == "gemm" and not kp and (ctx["check_x"] or ctx["check_y"]) and zp != 0:
        # Taps in the padding read input_zp from here: (zp - zp) * w = 0 is their true term, and the
        # folded bias already holds -zp * w for them. One window row (or tap) of it.
        zlen = kw * cg if ctx["row_dot"] else cg
        ctx["zrow"] = builder.add_const(f"{builder.prefix}_{fn}_zp", "i8", np.full(zlen, zp),
                                        f"{op.name} input_zp, read by window taps in the padding")
    return ctx


def _dense(builder, op: Op, fn: str) -> dict:
    nout, k = op.operands[1].shape
    w = np.asarray(op.operands[1].constant(), np.int8)
    ctx = {"m": op.operands[0].type.size // k, "k": k, "nout": nout}
    wzp = op.attrs.get("weight_zp", 0)
    # Packed 4-channel blocks (--optimize speed; the last block padded with zero rows): one input word
    # feeds 4 accumulators.
    packed = builder.packed and k % 4 == 0 and nout >= 4
    ctx.update(_weights(builder, op, fn, w, op.attrs["input_zp"], wzp, packed=(4, k) if packed else None))
    ctx.update(_epilogue(builder, op, fn, nout, "oc"))
    ctx["wzp"] = wzp
    ctx["packed"] = packed
    return ctx


def _requantize(builder, op: Op, fn: str) -> dict:
    ctx = {"size": op.result.type.size, "izp": op.attrs["input_zp"]}
    ctx.update(_epilogue(builder, op, fn, 1, "0"))
    return ctx


def broadcast_loops(out_shape, a_shape, b_shape) -> List[dict]:
    """Loops ``{n, sa, sb}`` (outermost first) that visit a broadcast elementwise result in order, with the
    element strides of each operand (0 along a broadcast dimension). Size-1 dimensions are dropped and
    neighbours that both operands step through contiguously (or both repeat) merge: 1xHxWxC * 1x1x1xC
    becomes [H*W: sa = C, sb = 0] and [C: sa = sb = 1], and equal shapes one flat loop."""
    rank = len(out_shape)
    dims = []
    strides = []
    for shape in (a_shape, b_shape):
        full = (1,) * (rank - len(shape)) + tuple(shape)
        st, acc = [0] * rank, 1
        for d in range(rank - 1, -1, -1):
            st[d] = acc if full[d] != 1 else 0
            acc *= full[d]
        strides.append(st)
    for d in range(rank):
        if out_shape[d] != 1:
            dims.append({"n": int(out_shape[d]), "sa": strides[0][d], "sb": strides[1][d]})
    merged: List[dict] = []
    for d in dims:
        if merged and all(merged[-1][k] == d[k] * d["n"] for k in ("sa", "sb")):
            merged[-1] = {"n": merged[-1]["n"] * d["n"], "sa": d["sa"], "sb": d["sb"]}
        else:
            merged.append(dict(d))
    return merged or [{"n": 1, "sa": 0, "sb": 0}]


def _broadcast(op: Op) -> dict:
    loops = broadcast_loops(op.result.shape, op.operands[0].shape, op.operands[1].shape)
    flat = len(loops) == 1 and loops[0]["sa"] == loops[0]["sb"] == 1
    return {"loops": loops, "flat": flat, "size": op.result.type.size}


def _mul(builder, op: Op, fn: str) -> dict:
    ctx = _broadcast(op)
    ctx.update(_epilogue(builder, op, fn, 1, "0"), zp_a=op.attrs["input_zp"][0], zp_b=op.attrs["input_zp"][1])
    return ctx


def _lut(builder, op: Op, fn: str) -> dict:
    table = builder.add_const(f"{builder.prefix}_{fn}_table", "i8", op.attrs["table"],
                              f"{op.name} {op.attrs['function']} (TFLite Micro int8) per input code, x + 128")
    return {"size": op.result.type.size, "table": table}


def _add(builder, op: Op, fn: str) -> dict:
    a = op.attrs
    zp = a["output_zp"]
    ls = a["left_shift"]
    ins = list(zip(a["input_multiplier"], a["input_shift"]))
    # s8_add.j2's SMMULR form of the input rescale: double rounding, no left shift, 0 <= mult < 2^31, and
    # 2 * ((x - zp) << left_shift) inside int32 (|x - zp| <= 255) so the doubled product is exact.
    fast_in = (a["rounding"] == "double" and 255 << (ls + 1) < 1 << 31
               and all(0 <= m < 1 << 31 and -31 <= sh <= 0 for m, sh in ins))
    # qcc_s8_requant_out's conditions (s8_common.j2) for the final rescale.
    fast_out = (a["rounding"] == "double" and 1 << 30 <= a["multiplier"][0] < 1 << 31 and -21 <= a["shift"][0] <= -1)
    return {**_broadcast(op), "sub": op.opname == "s8.sub", "fast_in": fast_in, "fast_out": fast_out, "e1": -a["shift"][0] - 1, "zp2p1": 2 * zp + 1,
            "e_a": -a["input_shift"][0], "e_b": -a["input_shift"][1],
            "requant": REQUANT_FN[a["rounding"]], "left_shift": a["left_shift"],
            "zp_a": a["input_zp"][0], "zp_b": a["input_zp"][1],
            "mult_a": a["input_multiplier"][0], "shift_a": a["input_shift"][0],
            "mult_b": a["input_multiplier"][1], "shift_b": a["input_shift"][1],
            "mult": a["multiplier"][0], "shift": a["shift"][0], "ozp": zp,
            "lo": a["act_min"], "hi": a["act_max"], "rlo": a["act_min"] - zp, "rhi": a["act_max"] - zp}


def _pool(builder, op: Op, fn: str) -> dict:
    n, h, w, c = op.operands[0].shape
    _, oh, ow, _ = op.result.shape
    kh, kw = op.attrs["kernel"]
    sh, sw = op.attrs["strides"]
    pt, pl, _, _ = op.attrs["pads"]
    return {"n": n, "h": h, "w_": w, "c": c, "oh": oh, "ow": ow, "kh": kh, "kw": kw, "sh": sh, "sw": sw,
            "pt": pt, "pl": pl, "lo": op.attrs["act_min"], "hi": op.attrs["act_max"]}


def _softmax_rows_cols(op: Op, max_cols: int, kind: str):
    """(rows, cols) of a softmax over the last axis; refused when the int32 sum of its exp terms could overflow."""
    x = op.operands[0]
    cols = x.shape[-1] if x.shape else 1
    if cols > max_cols:
        raise UnsupportedModelError(f"{op.describe()}: softmax over {cols} > {max_cols} values would "
                                    f"overflow the int32 sum of the {kind} softmax")
    return x.type.size // cols, cols


def _softmax(builder, op: Op, fn: str) -> dict:
    rows, cols = _softmax_rows_cols(op, SOFTMAX_MAX_COLS, "int8")
    a = op.attrs
    return {"rows": rows, "cols": cols, "mult": a["multiplier"], "shift": a["shift"],
            "diff_min": a["diff_min"]}


def _sigmoid_table(builder) -> str:
    """The int16 activations' table of sigmoid(i/24) (qcc.sim.s8_recurrent), one per file."""
    sym = f"{builder.prefix}_sigmoid_table"
    if all(c.symbol != sym for c in builder.consts):
        builder.add_const(sym, "u16", SIGMOID_TABLE, "sigmoid(i/24) in unsigned 0.16 (int16 sigmoid/tanh)")
    return sym


def _recurrent(builder, op: Op, fn: str) -> dict:
    """s8.lstm / s8.gru: the per-row biases with the zero points folded in, the multipliers.

    The kernel takes every operand but the bias as a pointer (plan.py), then y, h (and c): a streamed
    initial state is an arena buffer that the final state overwrites (the same bytes)."""
    a = op.attrs
    gates = 4 if op.opname == "s8.lstm" else 3
    t, i = op.operands[0].shape
    h = a["hidden_size"]
    w = np.asarray(op.operands[1].constant(), np.int64)
    r = np.asarray(op.operands[2].constant(), np.int64)
    b = np.asarray(op.operands[3].constant(), np.int64)
    zx, zh = a["input_zp"], a["output_zp"]
    bx = b[:gates * h] - zx * w.sum(axis=1)
    br = (b[gates * h:] if gates == 3 else np.zeros(gates * h, np.int64)) - zh * r.sum(axis=1)
    lbr = a.get("linear_before_reset", 1)
    ctx = {"t": t, "i": i, "h": h, "zp": zh, "lbr": lbr, "table": _sigmoid_table(builder),
           "requant": REQUANT_FN["double"],
           "w": "w", "r": "r",   # the kernel's pointer parameters: the weight operands as they are
           "bx": builder.add_const(f"{builder.prefix}_{fn}_bx", "i32", [_wrap32(v) for v in bx],
                                   f"{op.name} bias - input_zp * sum(w) per gate row"),
           "br": builder.add_const(f"{builder.prefix}_{fn}_br", "i32", [_wrap32(v) for v in br],
                                   f"{op.name} recurrent bias - output_zp * sum(r) per gate row"),
           "mx": a["input_multiplier"], "sx": a["input_shift"], "mr": a["recurrent_multiplier"],
           "sr": a["recurrent_shift"], "om": a["output_multiplier"], "os": a["output_shift"]}
    builder.dots.add(("s8", "s8"))
    if op.opname == "s8.lstm":
        ctx.update(fm=a["forget_multiplier"],
                   fs=a["forget_shift"], im=a["input_to_cell_multiplier"], is_=a["input_to_cell_shift"],
                   clip=a["cell_clip"], cell_ls=a["cell_scale_power"] + 12, peep=len(op.operands) > 6,
                   pm=a["peephole_multiplier"], ps=a["peephole_shift"])
    elif not lbr:
        # r * (h - zp) is already centred: the n rows take the raw recurrent bias and an int16 x int8 dot
        builder.dots.add(("s16", "s8"))
        ctx["bn"] = builder.add_const(f"{builder.prefix}_{fn}_bn", "i32", b[5 * h:], f"{op.name} recurrent bias of n")
    return ctx


# ---------------------------------------------------------------- 16x8 mode (int16 activations)
def reduced_multiplier(mult: int) -> int:
    """CMSIS-NN REDUCE_MULTIPLIER (TFLite's int64 MultiplyByQuantizedMultiplier): a 16-bit multiplier."""
    return (mult + (1 << 15)) >> 16 if mult < 0x7FFF0000 else 0x7FFF


S16_DEPTHWISE_MAX_TAPS = 511   # int32 window sums of int16 x int8 products (each |p| <= 2^22) stay exact


def is_s16_depthwise(op: Op) -> bool:
    """True when s16_conv2d.j2 runs ``op`` on its depthwise path (channel multiplier 1, pixel-blocked stores)."""
    if op.opname != "s8.conv2d" or op.operands[0].type.dtype != "i16":
        return False
    cout, kh, kw, cg = op.operands[1].shape
    return cg == 1 and op.attrs["group"] == op.operands[0].shape[-1] == cout and kh * kw <= S16_DEPTHWISE_MAX_TAPS


def _s16_weighted(builder, op: Op, fn: str, channels: int, weights=None) -> dict:
    """Weights, bias (int64 with rounding "s64", else int32) and the per-channel requantization of 16x8."""
    a = op.attrs
    wide = a["rounding"] == "s64"
    w = np.asarray(op.operands[1].constant(), np.int8) if weights is None else weights[0]
    wsym = builder.add_const(f"{builder.prefix}_{fn}_w", "i8", w,
                             f"{op.name} weights {list(w.shape)}" if weights is None else f"{op.name} {weights[1]}")
    b = op.operands[2].constant().astype(np.int64) if len(op.operands) > 2 else np.zeros(channels, np.int64)
    # The int64 accumulator is needed only when |bias| + 32768 * sum|w[c]| (the largest |acc| any int16
    # input gives) may leave int32; otherwise int32 sums and bias are exact and the requantization
    # multiplies 32 x 32 -> 64 bits once (SMULL).
    w_abs = np.abs(np.asarray(op.operands[1].constant(), np.int64)).reshape(channels, -1).sum(axis=1)
    acc32 = not wide or bool(np.all(np.abs(b) + 32768 * w_abs <= (1 << 31) - 1))
    bias = _per_channel(builder, fn, "b", "i32" if acc32 else "i64", b, channels, "oc", f"{op.name} bias")
    mults = [reduced_multiplier(int(m)) for m in a["multiplier"]] if wide else a["multiplier"]
    mult = _per_channel(builder, fn, "mult", "i32", mults, channels, "oc",
                        f"{op.name} requantization multipliers" + (" (reduced to 16 bits)" if wide else ""))
    shift = _per_channel(builder, fn, "shift", "i8", a["shift"], channels, "oc", f"{op.name} requantization shifts")
    at_c = lambda e: e[:-len("[oc]")] + "[c]" if e.endswith("[oc]") else e   # the same, indexed by c
    return {"w": wsym, "bias": bias if acc32 else f"(int64_t){bias}", "wide": wide, "mult": mult, "shift": shift,
            "bias_c": at_c(bias), "mult_c": at_c(mult), "shift_c": at_c(shift),
            "acc_t": "int32_t" if acc32 else "int64_t", "dot": "qcc_s16_dot32" if acc32 else "qcc_s16_dot",
            "requant": REQUANT_FN.get(a["rounding"]), "lo": a["act_min"], "hi": a["act_max"]}


def _s16_conv2d(builder, op: Op, fn: str) -> dict:
    a = op.attrs
    n, h, w_, c = op.operands[0].shape
    cout, kh, kw, cg = op.operands[1].shape
    _, oh, ow, _ = op.result.shape
    ctx = {"kind": "s16_conv2d", "n": n, "h": h, "w_": w_, "c": c, "oh": oh, "ow": ow, "cout": cout, "kh": kh,
           "kw": kw, "cg": cg, "cog": cout // a["group"], "sh": a["strides"][0], "sw": a["strides"][1],
           "dh": a["dilations"][0], "dw": a["dilations"][1], "pt": a["pads"][0], "pl": a["pads"][1],
           "depthwise": is_s16_depthwise(op)}
    relaid = None
    if ctx["depthwise"]:   # [C, KH, KW, 1] -> [KH*KW][C]: channels innermost
        w = np.asarray(op.operands[1].constant(), np.int8)
        relaid = (np.ascontiguousarray(w.reshape(cout, kh * kw).T), "depthwise weights [KH*KW][C]")
    ctx.update(_s16_weighted(builder, op, fn, cout, relaid))
    # A 1x1, stride-1, unpadded convolution is a matrix product over all pixels (s16_gemm, int32 sums only).
    ctx["pointwise"] = (a["group"] == 1 and kh == kw == 1 and a["strides"] == [1, 1] and not any(a["pads"])
                        and ctx["acc_t"] == "int32_t")
    return ctx


def _s16_dense(builder, op: Op, fn: str) -> dict:
    nout, k = op.operands[1].shape
    ctx = {"kind": "s16_dense", "m": op.operands[0].type.size // k, "k": k, "nout": nout}
    ctx.update(_s16_weighted(builder, op, fn, nout))
    return ctx


SOFTMAX16_MAX_COLS = 65535  # the int32 sum of exp terms (each <= 32767)


def _s16_softmax(builder, op: Op, fn: str) -> dict:
    rows, cols = _softmax_rows_cols(op, SOFTMAX16_MAX_COLS, "int16")
    a = op.attrs
    return {"kind": "s16_softmax", "rows": rows, "cols": cols, "mult": a["multiplier"],
            "shift": a["shift"], "requant": "qcc_s8_requant",
            "exp": builder.add_const(f"{builder.prefix}_{fn}_exp", "i16", SOFTMAX16_EXP_LUT,
                                     "TFLite int16 softmax: exp(x) on [-10, 0], 512 steps + 1 (gen_lut)"),
            "recip": builder.add_const(f"{builder.prefix}_{fn}_recip", "i16", SOFTMAX16_RECIP_LUT,
                                       "TFLite int16 softmax: 1 / (1 + x) on [0, 1], 512 steps + 1 (gen_lut)")}


S16_CONTEXTS = {"s8.conv2d": _s16_conv2d, "s8.dense": _s16_dense, "s8.softmax": _s16_softmax}


S8_CONTEXTS = {"s8.conv2d": _conv2d, "s8.dense": _dense, "s8.requantize": _requantize, "s8.add": _add,
               "s8.sub": _add, "s8.mul": _mul, "s8.lut": _lut, "s8.avgpool": _pool, "s8.maxpool": _pool, "s8.softmax": _softmax,
               "s8.lstm": _recurrent, "s8.gru": _recurrent}


def build_s8(builder, op: Op, fn: str) -> dict:
    """Context of one s8 layer; ``builder`` is the LayerBuilder (constants, dot helpers).

    ``xt`` is the activation C type: int16_t in the 16x8 mode, where conv2d and dense have their own
    kernels (s16_*.j2) and the others the int8 templates on int16 data, without the int8-only fast paths.
    """
    wide = op.operands[0].type.dtype == "i16"
    if wide and op.opname in S16_CONTEXTS:
        ctx = S16_CONTEXTS[op.opname](builder, op, fn)
    else:
        ctx = S8_CONTEXTS[op.opname](builder, op, fn)
    if wide:
        ctx.update(fast=False, fast_in=False, fast_out=False)
    ctx.update(xt="int16_t" if wide else "int8_t", xmin=-32768 if wide else -128)
    return ctx
