"""Render a lowered graph into the files of the cmsis backend.

Files (paths relative to the output folder):

    NAME.h                  the API (sizes, formats, arena size, run/quantize/dequantize)
    NAME.c                  one specialized function per layer, the arena, NAME_run
    NAME_weights.c          const weight, bias, shift and table arrays (flash)
    Makefile                libNAME.a, `make run` (QEMU), `make size`
    firmware/NAME_main.c    batch harness: float samples in, outputs out (semihosting or host stdio)
    firmware/*              startup, semihosting I/O and linker scripts copied from examples/firmware,
                            so the folder builds on its own

Python computes every number (``plan.py``, ``layers.py``); the templates hold
all C. With float outputs, a trailing float softmax/sigmoid/tanh (``plan.py``'s
float epilogue) runs in float C after the dequantize: ``expf``/``tanhf`` from
<math.h>, so the Makefile then links ``-lm``; its results match the
interpreter within float rounding, not bit for bit. The output is deterministic: same graph, same bytes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import jinja2
import numpy as np

from qcc.errors import InputError, UnsupportedModelError
from qcc.ir.graph import Graph
from qcc.ir.types import FixedPoint, UniformQuant

from .layers import LayerBuilder, ctype, float_epilogue_context, format_values, rows_ranged, storage_min_max
from .naming import c_comment, c_identifier
from .plan import DEFAULT_MAX_RECOMPUTE, RECURRENT_OPS, Plan, _nbytes, make_plan
from .share import share_kernels
from .stream import Call, Finish, band_op, call_operands, is_reduction, row_bytes
from .targets import TARGETS
from .cmsis_nn import KERNELS, CmsisNNKernels

FIRMWARE_FILES = ("startup.c", "semihost_io.c", "semihost_io.h", "fw_sections.ld")
SHORT_CTYPES = {"s8": "int8_t", "s16": "int16_t", "s32": "int32_t"}


@dataclass
class GeneratedModel:
    name: str
    target: str
    files: Dict[str, bytes]
    plan: Plan
    weight_bytes: int
    float_output: bool = False
    layers: List[dict] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    kernels: str = "qcc"        # "cmsis-nn": s8 layers call the CMSIS-NN library (cmsis_nn.py)
    scratch_bytes: int = 0      # CMSIS-NN scratch region at the end of the arena (included in arena_size)


def find_firmware_dir() -> Optional[Path]:
    """$QCC_FIRMWARE_DIR, else the installed ``qcc.firmware`` (examples/firmware); None when absent."""
    env = os.environ.get("QCC_FIRMWARE_DIR")
    candidates = [Path(env)] if env else []
    try:
        import qcc.firmware
        candidates.append(Path(qcc.firmware.__file__).resolve().parent)
    except ImportError:
        pass
    candidates.append(Path(__file__).resolve().parents[2] / "examples" / "firmware")
    for c in candidates:
        if all((c / f).is_file() for f in FIRMWARE_FILES):
            return c
    return None


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("qcc.backends.cmsis", "templates"),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined, autoescape=False)


def _hexf(x: float) -> str:
    h = float(np.float32(x)).hex()            # e.g. '0x1.8000000000000p-3'
    mant, exp = h.split("p")
    if "." in mant:
        mant = mant.rstrip("0").rstrip(".")
    return f"{mant}p{exp}f"


def _io_context(io, role: str, macro: str) -> dict:
    v = io.value
    q = v.type.quant
    lo, hi = storage_min_max(v)
    ctx = {"index": io.index, "role": role, "macro": macro, "size": v.type.size, "shape": list(v.shape),
           "ctype": ctype(v), "qmin": lo, "qmax": hi,
           "comment": c_comment(f"'{io.name}' {v.type.dtype} {list(v.shape)}"),
           "qmin_f": "-1.0e9f", "qmax_f": "1.0e9f", "qmin_pre": -1000000000, "qmax_pre": 1000000000}
    if isinstance(q, FixedPoint):
        ctx.update(fixed=True, frac_bits=q.frac_bits, zero_point=0, scale_literal=_hexf(2.0 ** -q.frac_bits),
                   mul_literal=_hexf(2.0 ** q.frac_bits))
    elif isinstance(q, UniformQuant):
        ctx.update(fixed=False, frac_bits=None, zero_point=q.zero_point, scale_literal=_hexf(q.scale))
    elif q is None:  # plain integers: scale 1
        ctx.update(fixed=True, frac_bits=0, zero_point=0, scale_literal=_hexf(1.0), mul_literal=_hexf(1.0))
    else:
        raise UnsupportedModelError(f"{role} '{io.name}' is quantized per axis; the C API needs one scale")
    return ctx


def _check_fits_ram(graph: Graph, tgt) -> None:
    """Refuse, before any planning, an integer tensor that alone exceeds the target's RAM (the arena holds it)."""
    if not tgt.ram_bytes:
        return
    values = list(graph.inputs) + [r for op in graph.ops if op.opname != "qcc.const" for r in op.results]
    for v in (v for v in values if not v.type.is_float):  # float API inputs/outputs are the caller's buffers
        size = int(np.prod(v.shape, dtype=object)) * v.type.np_dtype.itemsize
        if size > tgt.ram_bytes:
            label = v.name or next((o.name for o in (v.producer.operands if v.producer else []) if o.name), "")
            where = f"graph input '{v.name}'" if v.producer is None else \
                f"tensor '{label}' (the result of {v.producer.describe()})"
            raise UnsupportedModelError(
                f"{where} ({'x'.join(map(str, v.shape))} {v.type.dtype}) needs {size:,} bytes, more than the "
                f"{tgt.ram_bytes:,} bytes of RAM of {tgt.name}'s board; use a smaller input shape")


OPTIMIZE = ("speed", "size")


def generate(graph: Graph, name: str = "", target: str = "cortex-m4", float_output: bool = False,
             firmware_dir: Optional[Path] = None, version: str = "", kernels: str = "qcc",
             optimize: str = "speed",
             max_recompute: float = DEFAULT_MAX_RECOMPUTE, chains: Optional[list] = None) -> GeneratedModel:
    """The files of ``graph`` compiled for ``target``; the graph is not changed.

    ``kernels="cmsis-nn"`` makes the affine int8 layers call the CMSIS-NN library (cmsis_nn.py).
    ``optimize="speed"`` re-lays the int8 gemm/dense weights for SMLAD on cores with the DSP extension
    and no Helium (layers_s8.py packed_weights); ``"size"`` keeps the int8 tables and generic loops.
    ``max_recompute``: streamed chains (stream.py) may repeat this fraction of the MACs; 0 turns
    streaming off (CMSIS-NN kernels never stream); ``chains`` forces chains (plan.make_plan).
    """
    if not (isinstance(max_recompute, (int, float)) and 0 <= max_recompute <= 10):
        raise InputError(f"max_recompute must be a fraction between 0 and 10 (got {max_recompute!r})")
    if target not in TARGETS:
        raise InputError(f"unknown target '{target}' (known: {', '.join(TARGETS)})")
    if kernels not in KERNELS:
        raise InputError(f"unknown kernels '{kernels}' (known: {', '.join(KERNELS)})")
    if optimize not in OPTIMIZE:
        raise InputError(f"unknown --optimize '{optimize}' (known: {', '.join(OPTIMIZE)})")
    if not version:
        from qcc import __version__ as version
    tgt = TARGETS[target]
    name = c_identifier(name or graph.name, fallback="model")
    NAME = name.upper()
    graph.verify()
    _check_fits_ram(graph, tgt)
    plan = make_plan(graph, float_output=float_output, max_recompute=0 if kernels == "cmsis-nn" else max_recompute,
                     chains=chains)
    if tgt.ram_bytes and plan.arena_size > tgt.ram_bytes:
        raise UnsupportedModelError(
            f"the memory plan needs a {plan.arena_size:,}-byte arena, more than the {tgt.ram_bytes:,} bytes of "
            f"RAM of {target}'s board; use a smaller input or a model with smaller activations")
    # Packed weights pay off where SMLAD runs the dots; M0/M0+/M3 have no SMLAD, the M55's MVE dots
    # read the int8 tables (helpers.j2).
    builder = LayerBuilder(name, packed=optimize == "speed" and tgt.has_dsp and target != "cortex-m55")
    nn = CmsisNNKernels(builder, tgt) if kernels == "cmsis-nn" else None
    if nn is not None and any(plan.is_inplace(s) for s in plan.steps if s.op is not None and nn.handles(s.op)):
        plan = make_plan(graph, float_output=float_output, inplace=False, max_recompute=0)  # CMSIS-NN: out of place
    env = _environment()

    def arena_ptr(offset: int, t: str, const: bool) -> str:
        return f"({'const ' if const else ''}{t} *)({name}_arena + {offset})"

    def ptr(v, const: bool) -> str:
        kind, where = plan.where(v)
        if kind == "const":
            return builder.const_value(v, "constant")
        return arena_ptr(where, ctype(v), const)

    layers, calls, layer_info = [], [], []
    for i, step in enumerate(plan.steps):
        if step.chain is not None:
            texts, code, fns = _chain_code(env, builder, plan, step, i, name)
            layers.extend(texts)
            calls.append(code)
            for j, op in enumerate(step.chain.ops):
                layer_info.append({"fn": (fns[j] or [f"l{i}s{j}"])[0], "fns": fns[j], "op": op.opname, "name": op.name,
                                   "shape": list(op.result.shape), "where": plan.where(op.result), "streamed": True})
            continue
        if step.op is None:
            v = step.inputs[0]
            dst = arena_ptr(plan.output_offsets[step.out_index], ctype(v), False)
            calls.append(f"memcpy({dst}, {ptr(v, True)}, {_nbytes(v)});")
            continue
        if nn is not None and nn.handles(step.op):
            ctx = nn.build(i, step.op, builder.base_context(i, step.op))
        else:
            ctx = builder.build(i, step.op)
        # An in-place layer's input and output alias (plan.py, inplace.py): no restrict then.
        ctx["restrict"] = "" if plan.is_inplace(step) else "restrict "
        ctx["reverse"] = plan.is_reversed(step)  # output loops last to first (conv2d.j2)
        macro = getattr(env.get_template(f"ops/{ctx['kind']}.j2").module, ctx["kind"])
        layers.append(str(macro(ctx)).strip("\n"))
        args = [ptr(v, True) for v in step.inputs] + [ptr(v, False) for v in [step.output] + step.extra]
        if step.scratch is not None:
            args.append(arena_ptr(plan.where(step.scratch)[1], "int8_t", False))
        call = f"{ctx['fn']}({', '.join(args)})"
        # A CMSIS-NN layer returns arm_cmsis_nn_status: NAME_invoke stops with 1 + the failing step.
        calls.append(f"if ({call} != ARM_CMSIS_NN_SUCCESS)\n        return {i + 1};" if ctx.get("status")
                     else f"{call};")
        layer_info.append({"fn": ctx["fn"], "op": step.op.opname, "name": step.op.name,
                           "shape": list(step.output.shape), "where": plan.where(step.output)})

    # layers whose kernels differ only in their tables share one function (share.py)
    layers, _ = share_kernels(layers, {c.symbol: c.ctype for c in builder.consts})
    if nn is not None:
        nn.warnings = list(dict.fromkeys(nn.warnings))
        nn.place_scratch(plan)  # before arena_size is read below
    inputs = [_io_context(io, "input", f"{NAME}_INPUT{io.index}") for io in plan.inputs]
    outputs = [_io_context(io, "output", f"{NAME}_OUTPUT{io.index}") for io in plan.outputs]
    offset = 0
    for t in inputs:
        t["offset"] = offset
        offset += t["size"]
    for t, off in zip(inputs, plan.input_offsets):
        t["arena_ptr"] = arena_ptr(off, t["ctype"], False)
    for t, off in zip(outputs, plan.output_offsets):
        t["arena_ptr"] = arena_ptr(off, t["ctype"], False)
    epilogues, epilogue_warnings = _epilogues(env, name, plan, outputs, float_output)
    # Streamed recurrent state (plan.states): NAME_reset() restores each initial value (zero at start-up).
    resets = []
    for k, v in enumerate(plan.states):
        dst, init = arena_ptr(plan.where(v)[1], ctype(v), False), v.producer.attrs["value"]
        if np.any(init):
            sym = builder.add_const(f"{name}_state{k}", v.type.dtype, init, f"initial state {v.producer.name}")
            resets.append(f"memcpy({dst}, {sym}, {_nbytes(v)});")
        else:
            resets.append(f"memset({dst}, 0, {_nbytes(v)});")
    params = [f"const {t['ctype']} *in{t['index']}" for t in inputs]
    params += [f"{'float' if float_output else t['ctype']} *out{t['index']}" for t in outputs]
    consts = [{"symbol": c.symbol, "ctype": c.ctype, "count": len(c.values), "comment": c.comment,
               "text": format_values(c.values)} for c in builder.consts]
    # Zero bytes at start-up are the initial state unless some initial value is not zero.
    reset_at_start = any(np.any(v.producer.attrs["value"]) for v in plan.states)
    float_layers = any(s.kind.startswith("f32.") for s in plan.steps)  # --float-layers: float32 C, <math.h>
    common = {"name": name, "NAME": NAME, "resets": resets, "reset_at_start": reset_at_start, "version": version,
              "target": target,
              "model_comment": c_comment(f"@{graph.name}"), "inputs": inputs, "outputs": outputs,
              "run_params": ", ".join(params), "arena_size": plan.arena_size, "float_output": float_output,
              "consts": consts, "epilogues": epilogues, "float_layers": float_layers}
    env.globals["ctypes"] = SHORT_CTYPES
    helpers = str(env.get_template("helpers.j2").module.helpers(sorted(builder.dots)))
    kinds = [s.kind for s in plan.steps] + [op.opname for s in plan.steps if s.chain for op in s.chain.ops]
    if any(k.startswith("s8.") for k in kinds):  # affine int8 helpers (layers_s8.py)
        helpers += str(env.get_template("ops/s8_common.j2").module.s8_common())
    if any(s.kind in RECURRENT_OPS and s.kind.startswith("qnn.") for s in plan.steps):  # Qm.n LSTM / GRU helpers
        helpers += str(env.get_template("ops/recurrent_common.j2").module.recurrent_common())
    if any(s.kind in ("s8.lstm", "s8.gru") for s in plan.steps):  # int16 sigmoid/tanh (s8_lstm.j2)
        helpers += str(env.get_template("ops/s8_lstm.j2").module.s8_recurrent_common())
    # 16x8 kernels, whole-tensor or inside a row-streamed chain (a mixed int8/int16 graph streams either)
    step_ops = [s.op for s in plan.steps if not s.chain] + [op for s in plan.steps if s.chain for op in s.chain.ops]
    if any(op is not None and op.opname.startswith("s8.") and op.results[0].type.dtype == "i16" for op in step_ops):
        helpers += str(env.get_template("ops/s16_common.j2").module.s16_common())
    if nn is not None:
        helpers += str(env.get_template("ops/cmsisnn_common.j2").module.cmsisnn_common(
            name, NAME, nn.scratch_offset, nn.scratch))
    files = {
        f"{name}.h": env.get_template("model.h.j2").render(common),
        f"{name}.c": env.get_template("model.c.j2").render(common, helpers=helpers, layers=layers, calls=calls),
        f"{name}_weights.c": env.get_template("weights.c.j2").render(common),
        "Makefile": env.get_template("Makefile.j2").render(
            common, cpu_flags=" ".join(tgt.cpu_flags), qemu_machine=tgt.qemu_machine,
            linker_script=tgt.linker_script, cmsis_nn=nn is not None, libm=bool(epilogues) or float_layers),
        f"firmware/{name}_main.c": env.get_template("main.c.j2").render(common, in_floats=max(offset, 1)),
    }
    files = {k: v.encode("ascii") for k, v in files.items()}
    warnings = (list(nn.warnings) if nn is not None else []) + epilogue_warnings
    fw = firmware_dir or find_firmware_dir()
    if fw is None:
        warnings.append("examples/firmware not found (set QCC_FIRMWARE_DIR): the output folder has no "
                        "startup code or linker script, so `make run` needs FIRMWARE_DIR=...; "
                        "`make` (the library) works")
    else:
        for f in FIRMWARE_FILES + (tgt.linker_script,):
            files[f"firmware/{f}"] = (Path(fw) / f).read_bytes()
    weight_bytes = sum(len(c.values) * np.dtype(_NP[c.ctype]).itemsize for c in builder.consts)
    return GeneratedModel(name, target, files, plan, weight_bytes, float_output, layer_info, warnings,
                          kernels, nn.scratch if nn is not None else 0)


def _chain_code(env, builder: LayerBuilder, plan: Plan, step, index: int, name: str):
    """C of a streamed chain: a kernel per distinct band shape of each layer, and the band loop(s).

    Every band runs the same actions with arena offsets that move by a fixed
    amount from one band to the next (except around the first and last
    bands): such runs of bands become one ``for`` loop, the rest stays
    straight-line code. A band kernel is the layer's own kernel specialized
    for its slice (stream.band_op); its weights are the layer's (shared).
    """
    ch = step.chain
    variants: Dict[tuple, str] = {}
    texts: List[str] = []
    off = {j: plan.where(op.result)[1] for j, op in enumerate(ch.ops)}
    bands = []
    for actions in ch.bands:
        items = []
        for act in actions:
            if not isinstance(act, (Call, Finish)):
                rb = row_bytes(ch.ops[act.tensor].result)
                items.append(("move", "", (), (off[act.tensor], off[act.tensor] + act.shift * rb, act.keep * rb)))
                continue
            op = ch.ops[act.layer]
            if isinstance(act, Finish) or is_reduction(op):
                items.append(_reduction_item(env, builder, ch, act, index, variants, texts,
                                             lambda v: plan.where(v)[1]))
                continue
            ins, out = call_operands(ch, act, lambda v: plan.where(v)[1])
            ranged = rows_ranged(op)
            if ranged:   # one kernel for every band: the band's rows are arguments (ops/band.j2)
                clone, key = op, (act.layer,)
            else:        # a kernel per distinct band shape
                clone = band_op(op, act.a, act.c)
                key = (act.layer, clone.operands[0].shape[1], tuple(clone.attrs.get("pads", ())), act.c - act.a)
            if key not in variants:
                builder.sharing = True   # band kernels share the layer's weight tables
                try:
                    ctx = builder.build(f"{index}s{act.layer}" if ranged else f"{index}s{act.layer}v{len(variants)}",
                                        clone, ranged=ranged)
                finally:
                    builder.sharing = False
                # a layer written over its streamed operand (plan._stream_links) aliases its pointers
                inplace = any(b.root is op.result and id(b) in plan.inplace for b in plan.buffers)
                ctx["restrict"], ctx["reverse"] = "" if inplace else "restrict ", False
                macro = getattr(env.get_template(f"ops/{ctx['kind']}.j2").module, ctx["kind"])
                texts.append(str(macro(ctx)).strip("\n"))
                variants[key] = ctx["fn"]
            ptrs = tuple(p for p, *_ in ins) + (out[0],)
            types = tuple("const " + ctype(v) for v in clone.operands[:len(ins)]) + (ctype(op.result),)
            if ranged:   # the first input row the pointer holds, the output rows [a, c)
                ptrs, types = ptrs + (ins[0][2], act.a, act.c), types + ("int",) * 3
            items.append(("call", variants[key], tuple(types), tuple(ptrs)))
        bands.append(items)
    lines = [f"/* streamed: {c_comment(ch.describe())} */"]
    b = 0
    while b < len(bands):
        # the longest run of bands from b whose offsets move by one fixed step per band
        end, step_ = b + 1, None
        if b + 1 < len(bands) and _same_shape(bands[b], bands[b + 1]):
            step_ = _delta(bands[b], bands[b + 1])
            end = b + 2
            while end < len(bands) and _same_shape(bands[end - 1], bands[end]) \
                    and _delta(bands[end - 1], bands[end]) == step_:
                end += 1
        if end - b >= 3:
            lines.append(f"for (int k = 0; k < {end - b}; k++) {{")
            lines += ["    " + _action_c(name, it, d) for it, d in zip(bands[b], step_)]
            lines.append("}")
        else:
            end = b + 1
            lines += [_action_c(name, it, None) for it in bands[b]]
        b = end
    fns: Dict[int, List[str]] = {j: [] for j in range(len(ch.ops))}
    for key, fn in variants.items():   # the band kernels of each layer (a reduction: its sums and its division)
        fns[key[0] if isinstance(key[0], int) else len(ch.ops) - 1].append(fn)
    return texts, "\n    ".join(lines), fns


def _reduction_item(env, builder: LayerBuilder, ch, act, index: int, variants: Dict[tuple, str], texts: List[str],
                    offset):
    """A band of a global average pool (sums rows into ``ch.acc``) or its final division (stream_pool.j2)."""
    op = ch.ops[-1]
    x = op.operands[0]
    n, h, w, c = x.shape
    acc_t = "int64_t" if ch.acc.type.dtype == "i64" else "int32_t"
    module = env.get_template("ops/stream_pool.j2").module
    if isinstance(act, Finish):
        key = ("finish",)
        if key not in variants:
            fn = f"l{index}s{act.layer}_{c_identifier(op.name or 'avgpool', fallback='avgpool', max_len=32)}_done"
            ctx = {"fn": fn, "comment": c_comment(f"{op.opname} \"{op.name}\": sums -> [{c}]"), "acc_t": acc_t,
                   "yt": ctype(op.result), "c": c, "count": h * w, "s8": op.opname == "s8.avgpool",
                   "lo": op.attrs["act_min"], "hi": op.attrs["act_max"]}
            if not ctx["s8"]:
                s = op.attrs.get("out_shift", 0)
                ctx.update(num_mul=1 << max(-s, 0), den_mul=1 << max(s, 0), wide=acc_t == "int64_t")
            texts.append(str(module.stream_avgdone(ctx)).strip("\n"))
            variants[key] = fn
        return ("call", variants[key], ("const " + acc_t, ctype(op.result)), (offset(ch.acc), offset(ch.sink)))
    ins, out = call_operands(ch, act, offset)
    key = ("rowsum", act.c - act.a, act.a == 0)
    if key not in variants:
        fn = f"l{index}s{act.layer}v{len(variants)}_rowsum"
        ctx = {"fn": fn, "comment": c_comment(f"{op.opname} \"{op.name}\": sums of {act.c - act.a} row(s)"),
               "acc_t": acc_t, "xt": ctype(x), "c": c, "w_": w, "rows": act.c - act.a, "init": act.a == 0}
        texts.append(str(module.stream_rowsum(ctx)).strip("\n"))
        variants[key] = fn
    return ("call", variants[key], ("const " + ctype(x), acc_t), (ins[0][0], out[0]))


def _same_shape(x, y) -> bool:
    return len(x) == len(y) and all(a[:3] == b[:3] for a, b in zip(x, y))


def _delta(x, y):
    return [tuple(q - p for p, q in zip(a[3], b[3])) for a, b in zip(x, y)]


def _action_c(name: str, item, delta) -> str:
    kind, fn, types, vals = item

    def at(i: int) -> str:
        d = delta[i] if delta else 0
        return f"{name}_arena + {vals[i]}" + (f" + {d} * k" if d else "")
    if kind == "move":
        return f"memmove({at(0)}, {at(1)}, {vals[2]});"
    args = ", ".join(f"({t} *)({at(i)})" if t != "int" else (f"{vals[i]} + {delta[i]} * k" if delta and delta[i]
                                                             else str(vals[i])) for i, t in enumerate(types))
    return f"{fn}({args});"


def _epilogues(env, name: str, plan: Plan, outputs: List[dict], float_output: bool):
    """C of the float epilogues (plan.TensorIO.epilogue) and warnings; sets each output's ``epilogue``.

    With ``float_output`` each output's chain becomes static float kernels and
    ``NAME_epilogue_output<j>(float *y)``, which NAME_run applies to the
    dequantized floats. Without it the C stops at the quantized tensor (the
    chain is left out, with a warning).
    """
    texts, warnings = [], []
    for t, io in zip(outputs, plan.outputs):
        t["epilogue"] = []
        if not io.epilogue:
            continue
        ops = " -> ".join(op.opname for op in io.epilogue)
        if not float_output:
            warnings.append(f"output '{io.name}' ends in float {ops} after its q.dequantize; without float "
                            f"outputs (--float-output) {name}_run returns the quantized tensor before it")
            continue
        for k, op in enumerate(io.epilogue):
            ctx = float_epilogue_context(name, io.index, k, op)
            macro = getattr(env.get_template(f"ops/{ctx['kind']}.j2").module, ctx["kind"])
            texts.append(str(macro(ctx)).strip("\n"))
            t["epilogue"].append(ctx["fn"])
        t["epilogue_comment"] = c_comment(ops)
    return texts, warnings


_NP = {"float": np.float32, "int8_t": np.int8, "int16_t": np.int16, "int32_t": np.int32, "int64_t": np.int64, "uint8_t": np.uint8, "uint16_t": np.uint16}
