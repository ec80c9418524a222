"""The ``qcc`` compile driver: load a model, lower it to integers, emit C.

    qcc model.onnx -o build/net.c --target cortex-m4 --calib calib.npz          # q7
    qcc model.onnx -o build/net.c --target cortex-m7 --calib calib.npz --bits 16
    qcc lowered.qir -o build/net.c --target cortex-m0plus                       # already lowered

A float model (ONNX, or a .qir with float compute ops) runs the ``qmn{bits=..}``
pipeline with the calibration data (``--act-max NAME=V`` forces a tensor's range
to [-V, V]); an already lowered .qir (q.quantize -> qnn.* -> q.dequantize) goes
straight to the backend. ``--float-output`` makes NAME_run return floats; for a
float model it also passes ``float_output=true`` to the pipeline (``qmn`` or
``int8-calibrated``), which keeps a trailing softmax/sigmoid/tanh in float after
the final dequantize, and the backend runs it in float C (a float epilogue,
outside the bit-exact integer contract). A QDQ model keeps its own quantized
softmax (its scales are the user's), so there it only dequantizes. The C,
header, weights, Makefile and firmware harness are written into the folder of
``-o`` all at once or not at all.

A QDQ model compiles without calibration: with the ``int8`` pipeline, or with
``--scheme qmn`` the ``qmn-qdq`` one (power-of-two scales, zero points 0;
``--round-scales`` rounds others). ``--emit-onnx-qdq F.onnx`` also writes the
compiled graph as QDQ ONNX plus ``F.onnx.json`` (every tensor's format), which
compiles back to the same C.

The driver is the one place that connects the core to a backend: it looks the
backend up by name (``qcc.backends.get_backend``); the core itself never
imports backends.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from qcc.errors import InputError, UnsupportedModelError
from qcc.ir.graph import Graph
from qcc.backend_registry import get_backend
from qcc.frontend.qdq_lifters import is_qdq, is_weight_only  # noqa: F401  (part of this module's API)
from qcc.quant.calibration import METHODS as CALIBRATION_METHODS
from qcc.tools.cli import _check_output_paths, _run, _same_file, check_jobs, load_graph, parse_input_shapes

TARGET_NAMES = ("cortex-m0", "cortex-m0plus", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55")
SCHEMES = ("qmn", "int8")
KERNEL_CHOICES = ("qcc", "cmsis-nn")
# Ops a fully lowered graph may hold; anything else means the graph is still float.
BOUNDARY_OPS = frozenset({"qcc.const", "q.quantize", "q.dequantize"})
INTEGER_SHAPE_OPS = frozenset({"nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze", "nn.transpose",
                               "nn.concat", "nn.pad", "nn.gather"})
# Float ops allowed after an output's final q.dequantize: the --float-output epilogue (float C, not bit-exact).
FLOAT_EPILOGUE_OPS = frozenset({"nn.softmax", "nn.sigmoid", "nn.tanh"})


def build_parser(prog: str = "qcc") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Compile a model to integer-only C for a Cortex-M microcontroller.",
        epilog="examples:\n"
               "  qcc digits.onnx -o build/digits.c --target cortex-m4 --calib calib.npz\n"
               "  qcc kws.onnx -o out/kws.c --target cortex-m7 --calib mfcc.npy --bits 16 --act-max conv1=32\n"
               "  qcc net.qir -o out/net.c --target cortex-m0plus        (an already lowered graph)\n\n"
               "Writes NAME.c, NAME.h, NAME_weights.c, Makefile and firmware/ into the folder of -o;\n"
               "then `make` builds libNAME.a, `make run INPUT=samples.bin` runs it in QEMU, `make size`.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a float .onnx model, or a .qir graph (lowered or float)")
    p.add_argument("-o", "--output", required=True, metavar="OUT/NAME.c", help="the C file to write")
    p.add_argument("--target", required=True, choices=TARGET_NAMES, help="the Cortex-M core")
    p.add_argument("--calib", metavar="DATA", help="calibration inputs (.npz keyed by input name, .npy, or a folder)")
    p.add_argument("--scheme", choices=SCHEMES,
                   help="quantization scheme: qmn (Qm.n fixed point, the default for float models) or int8 "
                        "(affine TFLite/CMSIS-NN int8, the default for QDQ models); a QDQ model with "
                        "power-of-two scales and zero points 0 also compiles with qmn (no --calib)")
    p.add_argument("--bits", choices=("8", "16", "mixed"),
                   help="activation/weight bits of a float model: 8 (q7, the default), 16 (q15; with "
                        "--scheme int8, TFLite's 16x8 mode: int16 activations, int8 weights), or mixed "
                        "(8 or 16 per layer, chosen by output SQNR gained per byte; with --scheme int8 each layer "
                        "int8 or 16x8; see --target-sqnr, --max-flash, --max-ram)")
    p.add_argument("--target-sqnr", type=float, metavar="DB",
                   help="with --bits mixed: promote layers to 16 bits until the output SQNR (fake-quant "
                        "simulation vs float on the calibration data) reaches DB (default: within 1 dB of "
                        "the all-16-bit SQNR)")
    p.add_argument("--max-flash", type=int, metavar="BYTES",
                   help="with --bits mixed: flash budget; flash = weight and bias bytes + a code estimate "
                        "(1.8 KB per conv, 0.4 KB per dense, 1.5 KB for the API; measured at -O3 on cortex-m4)")
    p.add_argument("--max-ram", type=int, metavar="BYTES",
                   help="with --bits mixed: RAM budget for the arena (estimated during the search from "
                        "tensor lifetimes; the planned arena is checked against it afterwards)")
    p.add_argument("--name", help="C name prefix and file stem (default: the stem of -o)")
    p.add_argument("--report", metavar="FILE.html|FILE.md|FILE.json",
                   help="write a compile report: .html (self-contained, with plots: per-layer SQNR, activation "
                        "histograms, weight ranges, RAM timeline, MACs; a summary with advice), .md (sizes, "
                        "memory and quantization error per layer) or .json (the raw figures)")
    p.add_argument("--report-samples", type=int, metavar="N",
                   help="calibration samples the report evaluates (default: all, up to 256; 0: all)")
    p.add_argument("--input-shape", metavar="NAME=1x49x10x1", action="append", default=[],
                   help="fix the shape of an ONNX input whose dimensions are dynamic (repeatable)")
    p.add_argument("--emit-ir", metavar="FILE.qir", help="also write the lowered graph as text IR")
    p.add_argument("--emit-onnx", "--emit-onnx-qdq", dest="emit_onnx", metavar="FILE.onnx",
                   help="also write the compiled graph as fake-quant (QDQ) ONNX, for onnxruntime, Netron or "
                        "training, and FILE.onnx.json beside it with every tensor's format and range")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="calibrate in N processes (0: one per CPU); results equal a single process's")
    p.add_argument("--act-max", metavar="NAME=V", action="append", default=[],
                   help="force the range of tensor NAME to [-V, V] (repeatable)")
    p.add_argument("--method", choices=CALIBRATION_METHODS, default=None,
                   help="calibration range method (default: the scheme's, percentile 99.99 for qmn and minmax "
                        "for int8, as TFLite's converter)")
    p.add_argument("--format-search", choices=("output", "consumer", "input", "tensor", "range"), default=None,
                   help="how qmn picks activation formats: by the network output's error (default), the "
                        "consumers' output error, the input by its consumers and the rest by their own error "
                        "(input), each tensor's own error (tensor), or the range rule n = W-1-ceil(log2 max) "
                        "alone (range)")
    p.add_argument("--calib-samples", metavar="N", type=int, default=None,
                   help="calibrate on the first N samples of --calib only (default: all)")
    p.add_argument("--per-tensor", action="store_true",
                   help="one weight scale/format per tensor instead of one per output channel")
    p.add_argument("--float-output", action="store_true",
                   help="NAME_run returns float outputs (dequantized in C) instead of quantized ones; with "
                        "a float model a trailing softmax/sigmoid/tanh then runs in float C after the "
                        "dequantize (a float epilogue, not bit-exact); a QDQ model keeps its own integer one")
    p.add_argument("--float-layers", metavar="NAME,...", action="append", default=[],
                   help="keep these layers (ONNX node names, or the layer names of --report) in float32: "
                        "float C between an exact dequantize and a quantize, outside the bit-exact contract; "
                        "conv, dense, add/sub/mul, activations, pools, softmax (repeatable)")
    p.add_argument("--kernels", choices=KERNEL_CHOICES, default="qcc",
                   help="qcc (own specialized C, the default) or cmsis-nn: the affine int8 layers call the "
                        "CMSIS-NN library (the Makefile builds it from CMSIS_NN_DIR)")
    p.add_argument("--optimize", choices=("speed", "size"), default="speed",
                   help="speed (default): int8 conv/dense weights re-laid as int16 pairs for SMLAD on "
                        "cores with the DSP extension (M4, M7, M33; about 2x their flash); size: int8 "
                        "weight tables and the generic loops. Same outputs either way")
    p.add_argument("--max-recompute", default=None, metavar="P",
                   help="row-streamed execution: chains of layers run a band of rows at a time when that "
                        "lowers the arena, repeating at most P of the MACs (\"10%%\" or 0.1; default 10%%); "
                        "0 turns streaming off")
    p.add_argument("--round-scales", action="store_true",
                   help="with --scheme qmn and a QDQ model: round scales that are not powers of two to the "
                        "nearest one (listed as warnings) instead of refusing the model")
    p.add_argument("--stream-state", type=int, nargs="?", const=1, default=0, metavar="FRAMES",
                   help="keep LSTM/GRU state in the arena between NAME_invoke() calls (NAME_reset() starts a "
                        "new sequence), each call taking FRAMES time steps (default 1) of the sequence the "
                        "model was calibrated on")
    p.add_argument("--backend", default="cmsis", help=argparse.SUPPRESS)
    return p


def float_epilogue(graph: Graph) -> List:
    """The float softmax/sigmoid/tanh ops that trail a graph output's final q.dequantize.

    Walks back from each graph output through ``FLOAT_EPILOGUE_OPS`` with float
    operands; a chain counts only when it starts at a q.dequantize.
    """
    ops = []
    for v in graph.outputs:
        chain = []
        while v.producer is not None and v.producer.opname in FLOAT_EPILOGUE_OPS and v.producer.operands[0].type.is_float:
            chain.append(v.producer)
            v = v.producer.operands[0]
        if chain and v.producer is not None and v.producer.opname == "q.dequantize":
            ops += chain
    return ops


def is_lowered(graph: Graph) -> bool:
    """True when only integer ops remain between q.quantize and q.dequantize (plus a float epilogue:
    softmax/sigmoid/tanh after an output's final q.dequantize, as ``qmn{float_output=true}`` leaves;
    float layers ``f32.*`` with the shape ops between them, as ``--float-layers`` leaves)."""
    trailing = set(float_epilogue(graph))
    # f32.* ops are float layers kept on purpose (--float-layers); their edges are q.dequantize / q.quantize
    return all(op.opname.startswith(("qnn.", "s8.", "f32.")) or op.opname in BOUNDARY_OPS or op in trailing
               or (op.opname in INTEGER_SHAPE_OPS and (not op.result.type.is_float or _between_float_layers(op)))
               for op in graph.ops)


def _between_float_layers(op) -> bool:
    """A float reshape/flatten/squeeze/unsqueeze on a float layer's result (--float-layers chains)."""
    v = op.operands[0]
    while v.producer is not None and v.producer.opname in INTEGER_SHAPE_OPS:
        v = v.producer.operands[0]
    return v.producer is not None and v.producer.opname.startswith("f32.")


def parse_float_layers(specs: Sequence[str]) -> List[str]:
    """``--float-layers a,b --float-layers c`` -> ``["a", "b", "c"]``."""
    names = [n.strip() for spec in specs for n in spec.split(",") if n.strip()]
    if specs and not names:
        raise InputError("--float-layers takes layer names separated by commas, got none")
    return list(dict.fromkeys(names))


def parse_act_max(specs: Sequence[str]) -> Dict[str, float]:
    out = {}
    for spec in specs:
        name, sep, value = spec.rpartition("=")
        try:
            v = float(value)
        except ValueError:
            v = float("nan")
        if spec.count("=") != 1 or not name or not np.isfinite(v) or v <= 0:
            raise InputError(f"--act-max takes NAME=V (one '=') with V a positive finite number, got '{spec}'")
        if name in out:
            raise InputError(f"--act-max gives tensor '{name}' twice")
        out[name] = v
    return out


# The named pipeline that quantizes a float model under each --scheme.
FLOAT_PIPELINES = {"qmn": "qmn", "int8": "int8-calibrated"}


def lower(graph: Graph, *, calib: Optional[str], bits, scheme: str, act_max: Dict[str, float],
          model_path: str, jobs: int = 1, float_output: bool = False, method: Optional[str] = None,
          per_tensor: bool = False, mixed: Optional[Dict[str, float]] = None,
          calib_samples: Optional[int] = None, format_search: Optional[str] = None,
          float_layers: Sequence[str] = ()) -> Optional[Graph]:
    """Run the quantization pipeline on a float graph in place.

    ``float_output`` keeps a trailing softmax/sigmoid/tanh in float after the
    final dequantize (``qmn{float_output=true}`` / ``int8-calibrated{float_output=true}``).
    ``float_layers`` (op names) stay float32 between an exact dequantize and a quantize
    (the ``float-layers`` pass, ``qmn{float_layers=...}`` / ``int8-calibrated{float_layers=...}``).
    Returns the float graph as it was just before calibration (the per-layer
    report's reference).
    """
    from qcc.tools.report import run_keeping_float
    from qcc.transforms.passmanager import PassManager
    if not calib and not act_max:
        raise InputError(f"{model_path} is a float model: qcc needs calibration inputs to quantize it; "
                         f"pass --calib DATA (.npz keyed by input name, .npy, or a folder of them)")
    if calib and not Path(calib).exists():
        raise InputError(f"no such calibration file or folder: {calib}")
    if method is not None and method not in CALIBRATION_METHODS:
        raise InputError(f"--method must be one of {', '.join(CALIBRATION_METHODS)}, got '{method}'")
    if bits == "mixed":
        if not calib:
            raise InputError("--bits mixed scores its choices on calibration data; pass --calib DATA")
        # The search starts all-8-bit; its options ride on the pipeline (mixed-bits / mixed-bits-affine).
        bits = "8,mixed=true" + "".join(f",{k}={v}" for k, v in (mixed or {}).items() if v is not None)
    options = f"bits={bits}" + (",float_output=true" if float_output else "") + \
        (f",method={method}" if method else "") + (",per_channel=false" if per_tensor else "")
    if format_search:
        if scheme != "qmn":
            raise InputError(f"--format-search applies to --scheme qmn, not {scheme}")
        options += f",objective={format_search}"
    if float_layers:
        if any('"' in n for n in float_layers):
            raise InputError("--float-layers: a layer name holds a double quote; rename the node")
        options += f',float_layers="{",".join(float_layers)}"'
    pm = PassManager.parse(f"{FLOAT_PIPELINES[scheme]}{{{options}}}")
    with tempfile.TemporaryDirectory() as tmp:
        if calib_samples is not None:
            calib = first_samples(graph, calib, calib_samples, Path(tmp))
        context = {"calib": calib or "", "act_max": dict(act_max), "jobs": jobs}
        for p in pm.passes:
            p.context = context
        graph.context = context
        return run_keeping_float(pm, graph)[1]


def first_samples(graph: Graph, calib: Optional[str], n: int, folder: Path) -> str:
    """A copy of the first ``n`` samples of ``calib`` in ``folder`` (``--calib-samples``); its path."""
    from qcc.quant.calibration_data import CalibrationData
    if n < 1:
        raise InputError(f"--calib-samples must be at least 1, got {n}")
    if not calib:
        raise InputError("--calib-samples needs --calib DATA")
    data = CalibrationData(calib, graph)
    if n > data.num_samples:
        raise InputError(f"--calib-samples {n}: {calib} holds only {data.num_samples} samples")
    path = folder / "calib_first.npz"
    np.savez(path, **data.read(n))
    return str(path)


def dequantize_weights(graph: Graph) -> int:
    """Replace every DequantizeLinear of a constant by the float constant it computes
    (``(q - zp) * scale`` in float32, as the QDQ model itself computes it); returns the count."""
    from qcc.sim.qmn import dequantize_array
    count = 0
    for op in graph.ops:
        if op.opname == "q.dequantize" and op.operands[0].is_constant():
            stored = op.operands[0]
            value = dequantize_array(stored.constant(), stored.type.quant).astype(np.float32)
            const = graph.add_const(value, name=stored.producer.name or op.name)
            const.name = op.result.name
            graph.replace_all_uses(op.result, const)
            graph.erase_op(op)
            count += 1
    for op in graph.ops:  # the integer constants left without users
        if op.opname == "qcc.const" and not graph.uses(op.result) and not graph.is_output(op.result):
            graph.erase_op(op)
    return count


def lower_qdq(graph: Graph, *, scheme: str, model_path: str, round_scales: bool = False,
              float_output: bool = False) -> List[str]:
    """Lower a QDQ model in place, no calibration (the model carries its scales): the ``int8``
    pipeline, or with ``--scheme qmn`` the ``qmn-qdq`` one (power-of-two scales read as Qm.n
    formats; ``round_scales`` rounds the others). Returns notes for the user (rounded scales).

    Layers the int8 pipeline cannot lower (float islands a quantizer left between
    DequantizeLinear and QuantizeLinear, float ops after the last DequantizeLinear,
    weights int8 kernels do not take) are refused together, each named with the
    reason, before any code is generated.
    """
    from qcc.transforms.passmanager import PassManager
    if scheme == "qmn":
        pm = PassManager.parse(f"qmn-qdq{{round_scales={str(round_scales).lower()},"
                               f"float_output={str(float_output).lower()}}}")
        pm.run(graph)
        qdq = next(p for p in pm.passes if p.name == "qdq-to-qmn")
        return [f"--round-scales: {r}" for r in getattr(qdq, "rounded", [])]
    # The int8 pipeline ends in check-quantized; run that last check after the float layers a
    # quantizer left have been listed together (a user wants all of them, in ONNX terms, at once).
    pm = PassManager.parse("int8")
    pm.passes = [p for p in pm.passes if p.name != "check-quantized"]
    report = pm.run(graph)
    if not is_lowered(graph):
        reasons: Dict[str, List[str]] = {}
        for record in report.records:
            if record.pass_.name == "lower-qdq":
                for f in record.result.stats.get("match_failures", []):
                    reasons.setdefault(f.op, []).append(f.reason)
        raise UnsupportedModelError(unlowered_message(graph, reasons, model_path, float_output))
    PassManager.parse("check-quantized").run(graph)
    return []


def _onnx_op_types(model_path: str) -> Dict[str, str]:
    """ONNX node name -> op type (unnamed nodes named as the importer names them)."""
    if not str(model_path).endswith(".onnx"):
        return {}
    import onnx
    from qcc.frontend.importer import _node_names
    nodes = onnx.load(str(model_path), load_external_data=False).graph.node
    return {name: n.op_type for name, n in zip(_node_names(nodes), nodes)}


def unlowered_message(graph: Graph, reasons: Dict[str, List[str]], model_path: str, float_output: bool) -> str:
    """One line per float layer left after lowering a QDQ model: its node, op type and why."""
    op_types = _onnx_op_types(model_path)
    passthrough = {"nn.relu", "nn.clip"} | INTEGER_SHAPE_OPS
    epilogue = set(float_epilogue(graph)) if float_output else set()
    lines = []
    for op in graph.ops:
        if not op.opname.startswith("nn.") or op.opname in INTEGER_SHAPE_OPS or op in epilogue \
                or not any(v.type.is_float for v in op.results):
            continue
        end = op
        while len(graph.users(end.result)) == 1 and graph.users(end.result)[0].opname in passthrough:
            end = graph.users(end.result)[0]
        users = graph.users(end.result)
        closing = [u for u in users if u.opname == "q.quantize"]
        why = sorted({r for q in closing for r in reasons.get(q.describe(), [])})
        if not why and op.opname in passthrough:
            continue  # an activation of a layer reported on its own line
        if not why and graph.is_output(end.result):
            why = ["a float op after the last DequantizeLinear (a float tail); quantize it too, "
                   "or end the model at the DequantizeLinear"]
        elif not why and not closing:
            what = ", ".join(f'"{u.name}"' for u in users if u.name) or "float ops"
            why = [f"a float island: its result feeds {what} in float, not a QuantizeLinear "
                   f"(quantize every layer between DequantizeLinear and QuantizeLinear, or compile the "
                   f"original float model with --calib)"]
        elif not why:
            why = ["no int8 lowering"]
        kind = op_types.get(op.name, op.opname)
        lines.append(f"  node \"{op.name}\" ({kind}): {'; '.join(why)}")
    count = len(lines)
    return (f"{model_path}: {count} float layer{'s' if count != 1 else ''} of this QDQ model cannot be "
            f"lowered to int8; nothing was written:\n" + "\n".join(lines or ["  (no float layer found)"]))


def compile_model(model: str, output: str, target: str, *, calib: Optional[str] = None,
                  scheme: Optional[str] = None,
                  bits: Optional[int] = None, name: Optional[str] = None, report: Optional[str] = None,
                  emit_ir: Optional[str] = None, act_max: Optional[Dict[str, float]] = None,
                  float_output: bool = False, backend: str = "cmsis", kernels: str = "qcc",
                  input_shapes: Optional[Dict[str, tuple]] = None, jobs: int = 1,
                  report_samples: Optional[int] = None, emit_onnx: Optional[str] = None,
                  round_scales: bool = False, method: Optional[str] = None, per_tensor: bool = False,
                  target_sqnr: Optional[float] = None, max_flash: Optional[int] = None,
                  max_ram: Optional[int] = None, stream_state: int = 0,
                  calib_samples: Optional[int] = None, format_search: Optional[str] = None,
                  optimize: str = "speed", max_recompute: Optional[float] = None,
                  float_layers: Sequence[str] = ()):
    """Compile ``model`` and write every output file; returns the backend's GeneratedModel.

    ``bits`` is 8, 16 or "mixed" (``target_sqnr``, ``max_flash``, ``max_ram`` steer the mixed search).
    ``stream_state`` > 0: recurrent state kept between calls, that many frames per call (stream-state).
    ``max_recompute``: the fraction of MACs row-streamed chains may repeat (None: the backend's default).
    ``float_layers``: op names kept in float32 (float C between an exact dequantize and a quantize).
    """
    out = Path(output)
    if out.suffix != ".c":
        raise InputError(f"-o takes the path of the C file to write (OUT/NAME.c), got '{output}'")
    if bits is not None and bits not in (8, 16, "mixed"):
        raise InputError(f"--bits must be 8, 16 or mixed, got {bits}")
    mixed = _mixed_options(bits, target_sqnr, max_flash, max_ram)
    if report and Path(report).suffix not in (".md", ".json", ".html"):
        raise InputError(f"--report writes HTML (.html), Markdown (.md) or JSON (.json), got '{report}'")
    if report_samples is not None and report_samples < 0:
        raise InputError(f"--report-samples takes a number of samples (0: all), got {report_samples}")
    if emit_onnx and Path(emit_onnx).suffix != ".onnx":
        raise InputError(f"--emit-onnx takes the path of an .onnx file to write, got '{emit_onnx}'")
    check_jobs(jobs)
    _check_output_paths(model, [("-o", output), ("--emit-ir", emit_ir), ("--report", report),
                                ("--emit-onnx", emit_onnx)], sidecar_of="--emit-ir")
    graph = load_graph(model, input_shapes)
    for v in graph.inputs:
        if math.prod(v.shape) == 0:  # the interpreter runs empty tensors; a C API with empty buffers cannot
            raise InputError(f"{model}: input '{v.name}' has a zero dimension ({'x'.join(map(str, v.shape))}): "
                             f"it holds no values")
    _check_sizes(graph, model, getattr(get_backend(backend), "TARGETS", {}).get(target))
    float_graph = None
    notes: List[str] = []
    if is_weight_only(graph):
        # Weight-only ("hybrid") quantization: the float model with its int8-rounded weights.
        dequantize_weights(graph)
        if not calib and not act_max:
            raise InputError(f"{model} is weight-only quantized (int8 weights through DequantizeLinear, float "
                             f"activations): qcc dequantizes the weights and quantizes it like a float model, "
                             f"so it needs calibration inputs; pass --calib DATA")
    if is_lowered(graph) or is_qdq(graph):
        what = "already lowered" if is_lowered(graph) else "a QDQ model: it carries its own scales"
        if bits == "mixed":
            raise InputError(f"--bits mixed does not apply: {model} is {what}")
        if bits not in (None, 8) and not is_lowered(graph):
            raise InputError(f"--bits {bits} does not apply: {model} is {what}")
        for flag, given in (("--calib", calib), ("--act-max", act_max), ("--bits", bits), ("--method", method),
                            ("--per-tensor", per_tensor), ("--calib-samples", calib_samples is not None),
                            ("--format-search", format_search),
                            ("--round-scales", round_scales and (scheme != "qmn" or is_lowered(graph)))):
            if given:
                notes.append(f"ignoring {flag}: {model} is {what}")
        if float_layers:
            raise InputError(f"--float-layers keeps layers of a float model in float while the rest is "
                             f"calibrated; {model} is {what} (compile its float model with --calib instead)")
        if not is_lowered(graph):
            notes += lower_qdq(graph, scheme=scheme or "int8", model_path=model, round_scales=round_scales,
                               float_output=float_output)
    else:
        if round_scales:
            notes.append(f"ignoring --round-scales: {model} is a float model (it applies to QDQ models)")
        float_graph = lower(graph, calib=calib, bits=bits or 8, scheme=scheme or "qmn", act_max=act_max or {},
                            method=method, per_tensor=per_tensor, mixed=mixed, calib_samples=calib_samples,
                            format_search=format_search, float_layers=float_layers,
                            model_path=model, jobs=jobs, float_output=float_output)
    notes += graph.notes
    if float_epilogue(graph) and not float_output:
        ops = ", ".join(sorted({op.describe() for op in float_epilogue(graph)}))
        raise InputError(f"{model} ends in float ops after its final q.dequantize ({ops}): they run in C "
                         f"only with --float-output (NAME_run then returns floats); pass --float-output")
    if kernels == "cmsis-nn" and not any(op.opname.startswith("s8.") for op in graph.ops):
        raise InputError("--kernels cmsis-nn calls CMSIS-NN's affine int8 (s8) API, and this graph has no s8 "
                         "layer; compile with --scheme int8 (or a QDQ model), or leave --kernels at qcc")
    # Whatever the path (pipeline, QDQ, or an already lowered .qir), no layer may overflow its int32
    # accumulator in C: the pipelines end in this check, a lowered .qir gets it here.
    from qcc.transforms.passmanager import PassManager
    if stream_state:
        if stream_state < 0:
            raise InputError(f"--stream-state takes a positive number of frames per call, got {stream_state}")
        PassManager.parse(f"stream-state{{frames={stream_state}}}").run(graph)
    PassManager.parse("check-quantized").run(graph)
    extra = {"kernels": kernels} if kernels != "qcc" else {}  # only the cmsis backend knows cmsis-nn
    if optimize != "speed":
        extra["optimize"] = optimize
    if max_recompute is not None:
        extra["max_recompute"] = max_recompute
    gen = get_backend(backend).generate(graph, name=name or out.stem, target=target, float_output=float_output,
                                        **extra)
    gen.warnings[:0] = notes
    gen.mixed_bits = _check_mixed(graph, float_graph, calib, mixed, gen, report_samples)
    files = {out.parent / rel: data for rel, data in gen.files.items()}
    if emit_ir:
        extra_files = _ir_files(graph, Path(emit_ir))
        _refuse_overlap("--emit-ir", extra_files, files)
        files.update(extra_files)
    if emit_onnx:
        from qcc.export.onnx_export import onnx_files
        extra_files = dict(onnx_files(graph, emit_onnx))
        _refuse_overlap("--emit-onnx", extra_files, files)
        files.update(extra_files)
    if report:
        _refuse_overlap("--report", {Path(report): b""}, files)
        summary = make_report(gen, graph, model)
        if gen.mixed_bits:
            summary["mixed_bits"] = gen.mixed_bits
        if Path(report).suffix == ".json":
            files[Path(report)] = (json.dumps(summary, indent=2) + "\n").encode()
        elif Path(report).suffix == ".html":
            from qcc.tools.report_html import html_report
            files[Path(report)] = html_report(summary, float_graph, graph, calib, report_samples).encode()
        else:
            files[Path(report)] = markdown_report(summary, float_graph, graph, calib, report_samples).encode()
    inputs = {_same_file(p): flag for flag, p in (("the model", model), ("--calib", calib)) if p}
    for p in files:
        if _same_file(p) in inputs:
            raise InputError(f"writing {p} would overwrite {inputs[_same_file(p)]}; choose another -o folder")
    from qcc.fileio import write_files
    write_files(files)
    return gen


def _mixed_options(bits, target_sqnr, max_flash, max_ram) -> Optional[Dict[str, float]]:
    """The mixed-bits search options, checked; None unless --bits mixed."""
    given = [(flag, v) for flag, v in (("--target-sqnr", target_sqnr), ("--max-flash", max_flash),
                                       ("--max-ram", max_ram)) if v is not None]
    if bits != "mixed":
        if given:
            raise InputError(f"{given[0][0]} steers the per-layer bit choice: it needs --bits mixed")
        return None
    if target_sqnr is not None and not (math.isfinite(target_sqnr) and target_sqnr > 0):
        raise InputError(f"--target-sqnr takes a positive number of dB, got {target_sqnr}")
    for flag, v in (("--max-flash", max_flash), ("--max-ram", max_ram)):
        if v is not None and v <= 0:
            raise InputError(f"{flag} takes a positive number of bytes, got {v}")
    return {"target_sqnr": target_sqnr, "max_flash": max_flash, "max_ram": max_ram}


def _check_mixed(graph: Graph, float_graph: Optional[Graph], calib: Optional[str], mixed, gen,
                 samples: Optional[int]) -> Optional[dict]:
    """The mixed-bits choice (from the pipeline's context), its output SQNR re-measured with the integer
    simulator, and the planned arena checked against --max-ram (the search only estimated it)."""
    summary = (getattr(graph, "context", None) or {}).get("mixed_bits") if mixed else None
    if not summary:
        return None
    summary = dict(summary, arena_bytes=gen.plan.arena_size, weight_bytes=gen.weight_bytes)
    if float_graph is not None and calib:
        from qcc.tools.report import output_sqnr
        summary["verified_sqnr_db"] = round(output_sqnr(float_graph, graph, calib, samples), 2)
    if mixed.get("max_ram") and gen.plan.arena_size > mixed["max_ram"]:
        raise InputError(f"--max-ram {mixed['max_ram']} bytes is not met: the planned arena of the chosen "
                         f"bits is {gen.plan.arena_size} bytes (the search estimated {summary['ram_bytes']}); "
                         f"allow {gen.plan.arena_size} bytes, or give "
                         f"{max(1, mixed['max_ram'] - (gen.plan.arena_size - summary['ram_bytes']))} so the "
                         f"search leaves room for the difference")
    return summary


def _check_sizes(graph: Graph, model: str, target) -> None:
    """Before calibration runs the graph: a tensor whose elements alone (one byte each, at least, once
    quantized) outnumber the target's RAM cannot be compiled, and would only exhaust this machine."""
    ram = getattr(target, "ram_bytes", 0)
    if not ram:
        return
    values = list(graph.inputs) + [r for op in graph.ops if op.opname != "qcc.const" for r in op.results]
    for v in values:
        elements = math.prod(v.shape)  # exact: TensorType.size is int64 and a hostile shape overflows it
        if elements > ram:
            where = f"input '{v.name}'" if v.producer is None else f"the result of {v.producer.describe()}"
            raise UnsupportedModelError(
                f"{model}: {where} has {elements:,} elements ({'x'.join(map(str, v.shape))}), more bytes even "
                f"at int8 than the {ram:,} bytes of RAM of {target.name}'s board; use a smaller input shape")


def _refuse_overlap(flag: str, extra: Dict[Path, bytes], files: Dict[Path, bytes]):
    """Refuse an extra output that lands on a generated file (NAME.h, Makefile, firmware/...)."""
    generated = {_same_file(p): p for p in files}
    for p in extra:
        if _same_file(p) in generated:
            raise InputError(f"{flag} {p} would overwrite the generated {generated[_same_file(p)]}; "
                             f"give it a path of its own")


def _ir_files(graph: Graph, path: Path) -> Dict[Path, bytes]:
    from qcc.ir.printer import print_graph_with_resources, sidecar_path
    text, resources = print_graph_with_resources(graph)
    files = {path: text.encode()}
    if resources:
        buf = io.BytesIO()
        np.savez(buf, **resources)
        files[sidecar_path(path)] = buf.getvalue()
    return files


def _macs(op) -> int:
    if op.opname in ("qnn.conv2d", "s8.conv2d"):
        cout, kh, kw, cg = op.operands[1].shape
        return op.result.type.size * kh * kw * cg
    if op.opname in ("qnn.dense", "s8.dense"):
        return op.result.type.size * op.operands[1].shape[1]
    return 0


def parse_max_recompute(text: Optional[str]) -> Optional[float]:
    """``--max-recompute``: "10%" or 0.1 -> 0.1; None stays None (the backend's default)."""
    if text is None:
        return None
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 10:   # also refuses NaN
        raise InputError(f"--max-recompute takes a share of the MACs like 10% or 0.1 (0 turns streaming off), "
                         f"got '{text}'")
    return value


def make_report(gen, graph: Graph, model: str) -> dict:
    plan = gen.plan
    layers: List[dict] = []
    ops = [op for s in plan.steps for op in (s.chain.ops if getattr(s, "chain", None) else [s.op]) if op is not None]
    for info, op in zip(gen.layers, ops):
        layers.append({**info, "where": list(info["where"]), "macs": _macs(op),
                       "bytes": op.result.type.size * op.result.type.np_dtype.itemsize})

    def io(t):
        q = t.value.type.quant
        return {"name": t.name, "shape": list(t.value.shape), "dtype": t.value.type.dtype,
                "scale": getattr(q, "scale", 1.0), "zero_point": getattr(q, "zero_point", 0),
                "frac_bits": getattr(q, "frac_bits", None)}

    return {"model": str(model), "name": gen.name, "target": gen.target,
            "arena_bytes": plan.arena_size, "arena_lower_bound_bytes": plan.lower_bound,
            "memory": _memory(gen), "cycles": _cycles(gen),
            "weight_bytes": gen.weight_bytes, "macs": sum(e["macs"] for e in layers),
            "inputs": [io(t) for t in plan.inputs], "outputs": [io(t) for t in plan.outputs],
            "layers": layers, "warnings": gen.warnings}


def streaming_lines(st: Optional[dict]) -> List[str]:
    """The report's row-streaming section: the chains chosen, band heights, MAC overhead, arena saved."""
    if not st:
        return []
    lines = ["## Row-streamed execution", ""]
    if not st["chains"]:
        why = ("off (--max-recompute 0)" if not st["max_recompute"] else
               "the graph has too many layers for the chain search" if st.get("too_deep") else
               "no chain lowers the arena")
        return lines + [f"No streamed chain: {why}; arena {st['arena_without_streaming']:,} B.", ""]
    lines += [f"Arena {st['arena_without_streaming']:,} B without streaming; repeated MACs {st['extra_macs']:,} "
              f"of {st['total_macs']:,} ({100 * st['extra_mac_ratio']:.1f}%, bound {100 * st['max_recompute']:.0f}%).",
              "", "| chain | layers | band rows | halos | bands | kernel calls | band buffers | repeated MACs |",
              "|---|---:|---:|---|---:|---:|---:|---:|"]
    for k, c in enumerate(st["chains"]):
        lines.append(f"| {k} ({c['layers'][0][:40]} .. {c['layers'][-1][:40]}) | {len(c['layers'])} | "
                     f"{c['band_rows']} | {c['mode']} | {c['bands']} | {c['calls']} | {c['band_buffer_bytes']:,} B | "
                     f"{c['extra_macs']:,} |")
    return lines + [""]


def markdown_report(summary: dict, float_graph: Optional[Graph], graph: Graph, calib: Optional[str],
                    samples: Optional[int] = None) -> str:
    """The --report FILE.md text: sizes, memory per layer, and per-layer quantization error."""
    lines = [f"# {summary['name']}: compile report", "",
             f"model `{summary['model']}`, target {summary['target']}", "",
             "| figure | value |", "|---|---:|",
             f"| MACs | {summary['macs']:,} |",
             f"| weights (flash) | {summary['weight_bytes']:,} B |",
             f"| arena (peak RAM, input and output included) | {summary['arena_bytes']:,} B |",
             f"| lower bound (largest live set, no in-place) | {summary['arena_lower_bound_bytes']:,} B |", ""]
    if summary.get("mixed_bits"):
        from qcc.tools.report import mixed_bits_report
        lines += mixed_bits_report(summary["mixed_bits"]) + [""]
    memory = summary.get("memory") or {}
    lines += streaming_lines(memory.get("streaming"))
    per_layer = memory.get("layers") or []
    if per_layer:
        keys = [k for k in per_layer[0] if k not in ("where",)]
        lines += ["## Memory per layer", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in per_layer]
        lines.append("")
    if float_graph is not None and calib:
        from qcc.tools.report import quantization_report
        lines.append(quantization_report(float_graph, graph, calib, samples, title="Quantization per layer")
                     .replace("# Quantization per layer", "## Quantization per layer", 1))
    elif float_graph is None:
        lines.append("(no per-layer quantization table: the model came already quantized)")
    if getattr(graph, "qmn_choices", None):
        from qcc.tools.report import format_choices
        lines.append(format_choices(graph.qmn_choices))
    cyc = summary.get("cycles") or {}
    if "layers" in cyc:
        c, mhz = cyc["cycles"], cyc["clock_mhz"]
        lines += ["", f"## Estimated cycles per layer ({cyc['cpu']}, one call on an all-zero input)", "",
                  f"{c['typical']:,} cycles in all (low {c['low']:,}, high {c['high']:,}), "
                  f"{c['typical'] / (mhz * 1e3):.2f} ms at {mhz} MHz with zero-wait-state memory; "
                  f"{cyc['instructions']:,} instructions. Estimates, not measurements: see benchmarks/README.md.", "",
                  "| layer | instructions | est. cycles |", "|---|---:|---:|"]
        lines += [f"| {fn} | {v['instructions']:,} | {v['cycles']:,} |" for fn, v in cyc["layers"].items()]
    elif cyc.get("unavailable"):
        lines += ["", f"(no cycle estimate: {cyc['unavailable']})"]
    for w in summary.get("warnings", []):
        lines.append(f"- warning: {w}")
    return "\n".join(lines).rstrip("\n") + "\n"


def _memory(gen) -> dict:
    """The backend's memory plan numbers (peak RAM, lower bound, RAM per layer), when it has them."""
    import importlib
    try:
        plan_mod = importlib.import_module(type(gen).__module__.rsplit(".", 1)[0] + ".plan")
    except ImportError:
        return {}
    report = getattr(plan_mod, "memory_report", None)
    return report(gen.plan) if report else {}


def _cycles(gen) -> dict:
    """The backend's per-layer cycle estimate (cmsis: builds and emulates one call when the bench extra
    and arm-none-eabi-gcc are installed), or {"unavailable": why}; {} for a backend without one."""
    import importlib
    try:
        profile = importlib.import_module(type(gen).__module__.rsplit(".", 1)[0] + ".profile")
    except ImportError:
        return {}
    why = profile.unavailable_reason(gen)
    if why is None:
        try:
            return profile.layer_cycles(gen)
        except RuntimeError as exc:  # the C did not build or run: report it, keep the rest of the report
            why = f"{type(exc).__name__}: {exc}"
    return {"unavailable": why}


def _command(args: argparse.Namespace) -> int:
    import sys
    bits = None if args.bits is None else ("mixed" if args.bits == "mixed" else int(args.bits))
    gen = compile_model(args.model, args.output, args.target, calib=args.calib, scheme=args.scheme,
                        bits=bits, target_sqnr=args.target_sqnr, max_flash=args.max_flash, max_ram=args.max_ram, name=args.name, report=args.report, emit_ir=args.emit_ir,
                        act_max=parse_act_max(args.act_max), float_output=args.float_output,
                        backend=args.backend, kernels=args.kernels,
                        input_shapes=parse_input_shapes(args.input_shape), jobs=args.jobs,
                        report_samples=args.report_samples, emit_onnx=args.emit_onnx,
                        round_scales=args.round_scales, method=args.method, per_tensor=args.per_tensor,
                        stream_state=args.stream_state, calib_samples=args.calib_samples,
                        format_search=args.format_search, optimize=args.optimize,
                        max_recompute=parse_max_recompute(args.max_recompute),
                        float_layers=parse_float_layers(args.float_layers))
    folder = Path(args.output).parent
    for w in gen.warnings:
        print(f"qcc: warning: {w}", file=sys.stderr)
    m = gen.mixed_bits
    if m:
        wide = sum(1 for layer in m["layers"] if layer["bits"] == 16)
        print(f"qcc: mixed precision: {wide} of {len(m['layers'])} tensors/layers at 16 bits; output SQNR "
              f"{m['sqnr_db']} dB (all-8 {m['all8_sqnr_db']}, all-16 {m['all16_sqnr_db']}, "
              + ("stopped at the knee" if m.get("stopped_by") == "knee" else f"target {m['target_sqnr_db']}")
              + f"; integer simulator {m.get('verified_sqnr_db', 'not measured')}); flash "
              f"estimate {m['flash_bytes']} bytes (all-16 {m['all16_flash_bytes']})", file=sys.stderr)
    print(f"qcc: wrote {folder / (gen.name + '.c')}, {gen.name}.h, {gen.name}_weights.c, Makefile "
          f"(arena {gen.plan.arena_size} bytes, weights {gen.weight_bytes} bytes)", file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return _run("qcc", build_parser("qcc"), _command, argv)
