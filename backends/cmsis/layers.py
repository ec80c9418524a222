"""Per-layer template contexts: the constants each kernel macro is specialized with.

Python only computes numbers here (shapes, strides, shifts, clamps, folded
biases, bounds that pick 32- or 64-bit arithmetic); the C lives in
``templates/ops/*.j2``, one macro per op kind, named by ``ctx["kind"]``.

Folded at compile time, with the simulator's own helpers so the numbers are
the contract's: ``bias_eff[c] = rshift_round(bias[c], -bias_shift[c])`` (the
accumulator's start value). Accumulators are int32 and wrap modulo 2^32 in C
(unsigned arithmetic), which is exact whenever the true sum fits int32 — the
qnn contract, checked by the simulator and by check-quantized.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from qcc.errors import UnsupportedModelError
from qcc.ir.graph import Op, Value
from qcc.sim.qmn import rshift_round

from .naming import c_comment, c_identifier
from .layers_s8 import S8_CONTEXTS, S8_HANDLED_ATTRS, build_s8, im2col_length, padded_rows, window_segments
from .layers_recurrent import RECURRENT_HANDLED_ATTRS, build_recurrent
from .layers_f32 import F32_HANDLED_ATTRS, F32_KINDS, build_f32, c_float

C_TYPES = {"f32": "float", "i8": "int8_t", "i16": "int16_t", "i32": "int32_t", "i64": "int64_t", "u8": "uint8_t", "u16": "uint16_t"}
SHARED_MIN_ELEMENTS = 64  # equal constant arrays at least this long share one symbol
SHORT = {"i8": "s8", "i16": "s16", "i32": "s32"}
INT32_MAX = (1 << 31) - 1
_REQ = {"out_shift", "act_min", "act_max"}
_WIN = {"kernel", "strides", "pads", "act_min", "act_max"}
# Every attribute each kernel honours. An op carrying another one (the op
# contract grew) is refused rather than compiled with that attribute ignored.
HANDLED_ATTRS = {
    "qnn.conv2d": _REQ | {"strides", "pads", "dilations", "group", "bias_shift"},
    "qnn.dense": _REQ | {"bias_shift"},
    "qnn.add": _REQ | {"a_shift", "b_shift"},
    "qnn.sub": _REQ | {"a_shift", "b_shift"},
    "qnn.mul": _REQ,
    "qnn.requantize": _REQ,
    "qnn.maxpool": _WIN,
    "qnn.avgpool": _WIN | {"count_include_pad", "out_shift"},
    "qnn.lut": {"table"},
    "qnn.lut_interp": {"table"},
    "qnn.softmax": {"axis", "table", "table_shift"},
    "nn.transpose": {"perm"},
    "nn.concat": {"axis"},
    "nn.pad": {"pads", "value", "mode"},
    "nn.gather": {"axis"},
}
HANDLED_ATTRS.update(S8_HANDLED_ATTRS)  # affine int8 kernels: layers_s8.py
HANDLED_ATTRS.update(RECURRENT_HANDLED_ATTRS)  # Qm.n LSTM / GRU: layers_recurrent.py
HANDLED_ATTRS.update(F32_HANDLED_ATTRS)  # float layers (--float-layers) and their boundaries: layers_f32.py


def ctype(v: Value) -> str:
    return C_TYPES[v.type.dtype]


def storage_min_max(v: Value):
    info = np.iinfo(v.type.np_dtype)
    return int(info.min), int(info.max)


@dataclass
class ConstArray:
    symbol: str
    ctype: str
    values: List[int]
    comment: str


def format_values(values, per_line: int = 16) -> str:
    items = [c_float(v) if isinstance(v, float) else str(int(v)) for v in values]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return ",\n    ".join(lines)


def rows_ranged(op: Op) -> bool:
    """Whether one kernel of ``op`` can serve every band of a streamed chain, the band given as arguments.

    The 8- and 16-bit Qm.n and the int8 convolutions (every kernel path: ops/band.j2), batch 1, unless a
    1x1 stride-1 unpadded convolution, whose kernel runs all pixels as one row (its bands are all alike).
    """
    x = op.operands[0]
    if op.opname not in ("qnn.conv2d", "s8.conv2d") or (op.opname == "s8.conv2d" and x.type.dtype != "i8"):
        return False
    _, kh, kw, _ = op.operands[1].shape
    flat = (op.attrs["group"] == 1 and kh == kw == 1 and list(op.attrs["strides"]) == [1, 1]
            and not any(op.attrs["pads"]))
    return x.type.rank == 4 and x.shape[0] == 1 and not flat


class LayerBuilder:
    """Makes the context of every step and collects the constant arrays they need."""

    def __init__(self, prefix: str, packed: bool = False):
        self.prefix = prefix
        self.packed = packed                 # --optimize speed on an SMLAD core: packed int8 weights (layers_s8.py)
        self.consts: List[ConstArray] = []
        self.const_of: Dict[int, str] = {}   # id(Value) -> symbol of a constant data tensor
        self.dots = set()                    # (x short type, w short type) dot helpers needed
        self.sharing = False                 # while True, equal constant arrays share one symbol (band kernels)
        self._shared: Dict[tuple, str] = {}

    # ------------------------------------------------------------ constants
    def add_const(self, symbol: str, dtype: str, values, comment: str) -> str:
        # float32 constants (float layers) keep their values; everything else is integers
        if dtype == "f32":
            ints = [float(v) for v in np.ravel(np.asarray(values, np.float32))]
            raw = np.array(ints, dtype=np.float32).tobytes()
        else:
            ints = [int(v) for v in np.ravel(values)]
            raw = np.array(ints, dtype=np.int64).tobytes()
        key = (C_TYPES[dtype], raw)
        # Large equal tables (a Scan unrolled per step keeps one weight matrix per step) are stored once.
        if (self.sharing or len(ints) >= SHARED_MIN_ELEMENTS) and key in self._shared:
            return self._shared[key]
        self.consts.append(ConstArray(symbol, C_TYPES[dtype], ints, c_comment(comment)))
        self._shared.setdefault(key, symbol)
        return symbol

    def const_value(self, v: Value, what: str) -> str:
        """Symbol of a constant data operand (emitted once)."""
        if id(v) not in self.const_of:
            sym = f"{self.prefix}_c{len(self.const_of)}"
            # The producing op's name: it survives the text IR (loc), so C from a .qir equals C from the model.
            self.const_of[id(v)] = self.add_const(sym, v.type.dtype, v.constant(), f"{what} {v.producer.name}")
        return self.const_of[id(v)]

    # ------------------------------------------------------------ steps
    def build(self, index: int, op: Op, ranged: bool = False) -> dict:
        """The template context of one step; ``ranged`` (only where ``rows_ranged(op)``): its kernel takes a
        band of output rows as arguments (ops/band.j2), for a streamed chain."""
        unknown = sorted(set(op.attrs) - HANDLED_ATTRS[op.opname])
        if unknown:
            raise UnsupportedModelError(f"{op.describe()}: the cmsis backend does not implement attribute(s) "
                                        f"{', '.join(unknown)}")
        ctx = self.base_context(index, op)
        kind, fn = ctx["kind"], ctx["fn"]
        if op.opname in S8_CONTEXTS:
            ctx.update(build_s8(self, op, fn))
        elif op.opname in F32_KINDS:
            ctx.update(build_f32(self, op, fn))
        elif op.opname in RECURRENT_HANDLED_ATTRS:
            ctx.update(build_recurrent(self, op, fn))
        else:
            ctx.update(getattr(self, "_" + kind)(op, fn))
        if ranged:
            assert rows_ranged(op) and ctx["n"] == 1 and ctx["oh"] == op.result.shape[1], op.describe()
            ctx["ranged"] = True
        return ctx

    def base_context(self, index: int, op: Op) -> dict:
        """kind, function name and comment of a step (also used by cmsis_nn.py's kernels)."""
        kind = op.opname.replace(".", "_") if op.opname in S8_CONTEXTS else \
            F32_KINDS.get(op.opname) or op.opname.split(".")[1]
        fn = f"l{index}_{c_identifier(op.name or kind, fallback=kind, max_len=32)}"
        shapes = " x ".join("[" + ",".join(map(str, v.shape)) + "]" for v in op.operands)
        return {"kind": kind, "fn": fn, "index": index, "ranged": False,
                "comment": c_comment(f"{op.opname} \"{op.name}\": {shapes} -> [{','.join(map(str, op.results[0].shape))}]", 160),
                "yt": ctype(op.results[0])}

    def _per_channel(self, fn: str, what: str, values: List[int], channels: int, index_var: str, comment: str,
                     dtype: str = "i32") -> str:
        """A literal when every channel shares the value, else a table indexed by ``index_var``."""
        vals = np.broadcast_to(np.asarray(values, np.int64), (channels,))
        if np.all(vals == vals[0]):
            return str(int(vals[0])) + ("LL" if dtype == "i64" else "")
        dtype = "i8" if what == "shift" else dtype
        return self.add_const(f"{self.prefix}_{fn}_{what}", dtype, vals, comment) + f"[{index_var}]"

    def _weights_and_bias(self, op: Op, fn: str, channels: int, index_var: str, weights=None) -> dict:
        """Weight, bias and shift arrays; ``weights`` = (values, dtype, comment) stores a re-laid copy instead."""
        w = op.operands[1].constant()
        values, wdtype, what = weights or (w, op.operands[1].type.dtype, f"weights {list(w.shape)}")
        wsym = self.add_const(f"{self.prefix}_{fn}_w", wdtype, values, f"{op.name} {what}")
        b = op.operands[2].constant() if len(op.operands) > 2 else None
        shifts = np.broadcast_to(np.asarray(op.attrs["bias_shift"], np.int64), (channels,))
        bias = np.zeros(channels, np.int64) if b is None else rshift_round(np.asarray(b, np.int64), -shifts)
        wide = len(op.operands) > 2 and op.operands[2].type.dtype == "i64"  # an int64 accumulator
        if not wide and np.abs(bias).max(initial=0) > INT32_MAX:
            raise UnsupportedModelError(f"{op.describe()}: bias << bias_shift does not fit int32")
        bias_expr = self._per_channel(fn, "b", bias.tolist(), channels, index_var,
                                      f"{op.name} bias << bias_shift", "i64" if wide else "i32")
        shift = self._per_channel(fn, "shift", op.attrs["out_shift"], channels, index_var,
                                  f"{op.name} output shifts")
        xs, ws = SHORT[op.operands[0].type.dtype], SHORT[op.operands[1].type.dtype]
        self.dots.add((xs, ws))
        # The blocked kernels index bias and shift by other variables: the table symbol (or literal) alone.
        at = lambda expr: expr[:-len(f"[{index_var}]")] if expr.endswith(f"[{index_var}]") else expr
        return {"w": wsym, "bias": bias_expr, "shift": shift, "dot": f"qcc_dot_{xs}_{ws}", "wide": wide,
                "bias_t": at(bias_expr), "bias_tab": bias_expr != at(bias_expr),
                "shift_t": at(shift), "shift_tab": shift != at(shift), "xs": xs, "ws": ws,
                "xt": ctype(op.operands[0]), "wt": C_TYPES[wdtype],
                "rq": "qcc_requant_rs" if min(np.ravel(op.attrs["out_shift"])) >= 1 else "qcc_requant",
                "lo": op.attrs["act_min"], "hi": op.attrs["act_max"]}

    def _conv2d(self, op: Op, fn: str) -> dict:
        n, h, w, c = op.operands[0].shape
        cout, kh, kw, cg = op.operands[1].shape
        _, oh, ow, _ = op.result.shape
        g = op.attrs["group"]
        sh, sw = op.attrs["strides"]
        dh, dw = op.attrs["dilations"]
        pt, pl, pb, pr = op.attrs["pads"]
        # Kernel shape (conv2d.j2): "gemm" blocks 2 pixels x 2 output channels (ungrouped), "depthwise"
        # 4 channels of one pixel (weights re-laid [KH][KW][C]), "generic" one output at a time.
        path = "gemm" if g == 1 else ("depthwise" if cg == 1 and cout == c else "generic")
        if len(op.operands) > 2 and op.operands[2].type.dtype == "i64":
            path = "wide"  # int64 accumulator: one output at a time, like "generic"
        flat = path == "gemm" and kh == kw == 1 and (sh, sw) == (1, 1) and not any(op.attrs["pads"])
        # Few input channels: the im2col gemm path (a pixel pair's windows copied contiguous, weights [Cout][Kp]).
        kp = im2col_length(kh, kw, cg, op.operands[0].type.np_dtype.itemsize, flat) if path == "gemm" else 0
        weights = None
        if path == "depthwise":
            weights = self._depthwise_weights(op)
        elif kp:
            weights = (padded_rows(op.operands[1].constant(), kp), op.operands[1].type.dtype,
                       f"weights [Cout={cout}][KH*KW*Cin={kh * kw * cg}, zero-padded to {kp}]")
        ctx = self._weights_and_bias(op, fn, cout, "oc", weights)
        if flat:
            # A 1x1 stride-1 convolution is a matrix product over all pixels: one long row pairs them all.
            n, h, w, oh, ow = 1, 1, n * h * w, 1, n * h * w
        ctx["dw_perm"] = path == "depthwise" and ctx["wt"] == "int16_t" and ctx["xs"] == "s8"
        ctx.update(path=path, kp=kp, n=n, h=h, w_=w, c=c, oh=oh, ow=ow, cout=cout, kh=kh, kw=kw, cg=cg, cog=cout // g, group=g,
                   sh=sh, sw=sw, dh=dh, dw=dw, pt=pt, pl=pl,
                   # Window taps can fall outside the input only with padding (or a ragged last window).
                   check_y=pt > 0 or (oh - 1) * sh - pt + (kh - 1) * dh >= h,
                   check_x=pl > 0 or (ow - 1) * sw - pl + (kw - 1) * dw >= w,
                   # One contiguous dot over a whole window row: input row KW*C and weight row KW*CG
                   # are both contiguous when the convolution is not grouped and not dilated.
                   row_dot=g == 1 and dw == 1 and kw > 1)
        if path == "depthwise":
            # Runs of output columns with the same in-bounds taps: each is unrolled with constant bounds.
            ctx["col_segs"] = window_segments(ow, sw, pl, kw, dw, w)
        return ctx

    def _depthwise_weights(self, op: Op):
        """[C,KH,KW,1] as [KH*KW][C] so a tap's channels are contiguous like the input's.

        int8 input (int8 or int16 weights): int16 weights, each group of 4 channels stored as
        (c, c+2, c+1, c+3), the lanes SXTB16 makes of an input word (bytes 0,2 and,
        rotated, 1,3), so one word pairs with each half of the widened input (the
        template's ``dw_perm``).
        """
        w = op.operands[1].constant()
        c = w.shape[0]
        taps = np.asarray(w, np.int64).reshape(c, -1).T.copy()          # [KH*KW, C]
        if op.operands[0].type.dtype != "i8":
            return taps, op.operands[1].type.dtype, f"depthwise weights [KH*KW={taps.shape[0]}][C={c}]"
        blocks = c // 4 * 4
        perm = np.arange(c)
        perm[:blocks] = (np.arange(blocks) // 4 * 4 + np.tile([0, 2, 1, 3], blocks // 4))
        return taps[:, perm], "i16", f"depthwise weights [KH*KW={taps.shape[0]}][C={c}], int16, lanes (c,c+2,c+1,c+3)"

    def _dense(self, op: Op, fn: str) -> dict:
        x = op.operands[0]
        nout, k = op.operands[1].shape
        ctx = self._weights_and_bias(op, fn, nout, "j")
        ctx.update(m=x.type.size // k, k=k, nout=nout)
        return ctx

    def _add(self, op: Op, fn: str) -> dict:
        a, b = op.operands
        ash, bsh = op.attrs["a_shift"], op.attrs["b_shift"]
        amax = max(abs(x) for x in storage_min_max(a)) << ash
        bmax = max(abs(x) for x in storage_min_max(b)) << bsh
        return {"at": ctype(a), "bt": ctype(b), "size": op.result.type.size, "a_mul": 1 << ash, "b_mul": 1 << bsh,
                "shift": op.attrs["out_shift"][0], "lo": op.attrs["act_min"], "hi": op.attrs["act_max"],
                "wide": amax + bmax > INT32_MAX}

    def _sub(self, op: Op, fn: str) -> dict:
        return self._add(op, fn)  # same context; sub.j2 subtracts the aligned b

    def _mul(self, op: Op, fn: str) -> dict:
        a, b = op.operands
        return {"at": ctype(a), "bt": ctype(b), "size": op.result.type.size, "shift": op.attrs["out_shift"][0],
                "lo": op.attrs["act_min"], "hi": op.attrs["act_max"]}

    def _requantize(self, op: Op, fn: str) -> dict:
        return {"xt": ctype(op.operands[0]), "size": op.result.type.size, "shift": op.attrs["out_shift"][0],
                "lo": op.attrs["act_min"], "hi": op.attrs["act_max"]}

    def _pool(self, op: Op) -> dict:
        n, h, w, c = op.operands[0].shape
        _, oh, ow, _ = op.result.shape
        kh, kw = op.attrs["kernel"]
        sh, sw = op.attrs["strides"]
        pt, pl, _, _ = op.attrs["pads"]
        return {"xt": ctype(op.operands[0]), "n": n, "h": h, "w_": w, "c": c, "oh": oh, "ow": ow, "kh": kh,
                "kw": kw, "sh": sh, "sw": sw, "pt": pt, "pl": pl, "lo": op.attrs["act_min"],
                "hi": op.attrs["act_max"]}

    def _maxpool(self, op: Op, fn: str) -> dict:
        ctx = self._pool(op)
        ctx["xmin"] = storage_min_max(op.operands[0])[0]
        return ctx

    def _avgpool(self, op: Op, fn: str) -> dict:
        ctx = self._pool(op)
        ctx["include_pad"] = op.attrs["count_include_pad"]
        kh, kw = op.attrs["kernel"]
        s = op.attrs.get("out_shift", 0)
        # out_shift s moves the format in the same rounding: sum / (count << s), or (sum << -s) / count.
        ctx["num_mul"], ctx["den_mul"] = 1 << max(-s, 0), 1 << max(s, 0)
        biggest = max(abs(x) for x in storage_min_max(op.operands[0])) * kh * kw * ctx["num_mul"]
        # div_round_away forms 2|num| + den: 64-bit only when that can leave int32.
        ctx["wide"] = 2 * biggest + kh * kw * ctx["den_mul"] > INT32_MAX
        return ctx

    def _lut(self, op: Op, fn: str) -> dict:
        table = self.add_const(f"{self.prefix}_{fn}_table", op.result.type.dtype, op.attrs["table"],
                               f"{op.name} table, indexed by x + 128")
        return {"xt": ctype(op.operands[0]), "size": op.result.type.size, "table": table}

    def _lut_interp(self, op: Op, fn: str) -> dict:
        table = self.add_const(f"{self.prefix}_{fn}_table", "i32", op.attrs["table"],
                               f"{op.name} table sampled every 256 input steps")
        return {"xt": ctype(op.operands[0]), "size": op.result.type.size, "table": table}

    def _softmax(self, op: Op, fn: str) -> dict:
        x = op.operands[0]
        cols = x.shape[-1] if x.shape else 1
        table = self.add_const(f"{self.prefix}_{fn}_table", "i32", op.attrs["table"],
                               f"{op.name} exp table (Q0.15)")
        return {"xt": ctype(x), "rows": x.type.size // cols, "cols": cols, "table": table,
                "ts": op.attrs["table_shift"], "out_frac": 7 if op.result.type.dtype == "i8" else 15,
                "ymax": storage_min_max(op.result)[1]}

    def _transpose(self, op: Op, fn: str) -> dict:
        x = op.operands[0]
        perm = op.attrs["perm"]
        strides = [int(np.prod(x.shape[i + 1:], dtype=np.int64)) for i in range(x.type.rank)]
        return {"xt": ctype(x), "dims": [x.shape[p] for p in perm], "strides": [strides[p] for p in perm]}

    def _concat(self, op: Op, fn: str) -> dict:
        first = op.operands[0]
        axis = op.attrs["axis"] % first.type.rank
        outer = int(np.prod(first.shape[:axis], dtype=np.int64))
        chunks = [int(np.prod(v.shape[axis:], dtype=np.int64)) for v in op.operands]
        offsets = [sum(chunks[:i]) for i in range(len(chunks))]
        return {"xts": [ctype(v) for v in op.operands], "outer": outer, "parts": list(zip(chunks, offsets)),
                "total": sum(chunks)}

    def _pad(self, op: Op, fn: str) -> dict:
        x = op.operands[0]
        rank = x.type.rank
        pads = op.attrs["pads"]
        if any(p < 0 for p in pads):
            raise UnsupportedModelError(f"{op.describe()}: negative pads (cropping) are not supported")
        value = op.attrs["value"]
        lo, hi = storage_min_max(x)
        if value != int(value) or not lo <= value <= hi:
            raise UnsupportedModelError(f"{op.describe()}: pad value {value} is not a {x.type.dtype} integer")
        out = op.result.shape
        out_strides = [int(np.prod(out[i + 1:], dtype=np.int64)) for i in range(rank)]
        in_strides = [int(np.prod(x.shape[i + 1:], dtype=np.int64)) for i in range(rank)]
        begin = sum(pads[i] * out_strides[i] for i in range(rank))
        return {"xt": ctype(x), "value": int(value), "size": op.result.type.size, "in_dims": list(x.shape),
                "out_strides": out_strides, "begin": begin, "row": x.shape[-1] if rank else 1,
                "mode": op.attrs["mode"], "out_dims": list(out), "in_strides": in_strides,
                "pads_begin": list(pads[:rank])}

    def _gather(self, op: Op, fn: str) -> dict:
        x, idx = op.operands
        axis = op.attrs["axis"] % x.type.rank
        n = x.shape[axis]
        indices = [int(i) % n for i in np.ravel(idx.constant())]  # np.take: negative counts from the end
        return {"xt": ctype(x), "outer": int(np.prod(x.shape[:axis], dtype=np.int64)), "n": n,
                "inner": int(np.prod(x.shape[axis + 1:], dtype=np.int64)), "indices": indices}


# Float epilogue ops (plan.FLOAT_EPILOGUE_OPS): the attributes each float kernel honours.
FLOAT_HANDLED_ATTRS = {"nn.softmax": {"axis"}, "nn.sigmoid": set(), "nn.tanh": set()}


def float_epilogue_context(prefix: str, out_index: int, position: int, op: Op) -> dict:
    """Context of one float epilogue op on output ``out_index`` (templates/ops/float_*.j2).

    The kernel works in place on the caller's float output (``float *y``),
    after the dequantize. Softmax views the shape as [outer, n, inner] around
    its axis.
    """
    extra = set(op.attrs) - FLOAT_HANDLED_ATTRS[op.opname]
    if extra:
        raise UnsupportedModelError(f"the cmsis backend does not handle attribute(s) {sorted(extra)} of "
                                    f"{op.describe()}")
    kind = op.opname.split(".", 1)[1]
    shape = list(op.result.shape)
    ctx = {"kind": f"float_{kind}", "fn": f"{prefix}_output{out_index}_{position}_{kind}",
           "comment": c_comment(f"{op.opname} '{op.name}' {shape}"), "size": int(np.prod(shape, dtype=np.int64))}
    if kind == "softmax":
        axis = op.attrs["axis"]
        axis = axis + len(shape) if axis < 0 else axis
        ctx.update(axis=axis, outer=int(np.prod(shape[:axis], dtype=np.int64)), n=shape[axis],
                   inner=int(np.prod(shape[axis + 1:], dtype=np.int64)))
    return ctx
