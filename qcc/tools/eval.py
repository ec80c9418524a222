"""``qcc-eval``: compile a model, then measure it on a whole data set.

    qcc-eval digits.onnx --calib calib.npz --data test.npz --labels labels
    qcc-eval digits.onnx --calib calib.npz --data test.npz --labels labels --target cortex-m4 --device qemu
    qcc-eval kws_int8_qdq.onnx --data golden_float.npz --input-key input --scheme int8

The model is lowered exactly as ``qcc`` lowers it (a float model with
``--calib`` through ``qmn`` or ``int8-calibrated``; a QDQ model through
``int8``). Then every sample of ``--data`` (read by the shared reader:
real values in the model's units, ``--raw`` for stored integers) runs on

* float: the ONNX model in onnxruntime (for a QDQ model its int8 input is
  quantized with the model's own scale, and its int8 output dequantized);
* simulator: qcc's integer simulator, the contract the C meets bit for bit;
* device (``--device qemu``): the generated C built for ``--target`` with the
  backend's firmware harness and run in QEMU, one run for all samples.

Per row, over N samples, on the first graph output ``y`` (real values) against
the float output ``f``::

    accuracy        = #{argmax y_i == label_i} / N           (with --labels)
    top-1 agreement = #{argmax y_i == argmax f_i} / N
    SQNR            = 10 log10(sum f^2 / sum (f - y)^2) dB    (inf when y == f)
    bit-exact       = #{stored integers of every output of sample i equal the simulator's}
                      (with --float-layers a difference is reported, not an error: float layers
                      agree with the simulator within float rounding only)

The exit status is 1 when the device differs from the simulator on any sample.
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from qcc.errors import InputError
from qcc.ir.graph import Graph
from qcc.tools.cli import _run, add_data_options, load_graph, parse_input_keys, parse_input_shapes

DEVICES = ("qemu",)


def build_parser(prog: str = "qcc-eval") -> argparse.ArgumentParser:
    from qcc.tools.compile import SCHEMES, TARGET_NAMES
    p = argparse.ArgumentParser(
        prog=prog, description="Compile a model and compare float, simulator and device results on a data set.",
        epilog="examples:\n"
               "  qcc-eval digits.onnx --calib calib.npz --data test.npz --labels labels\n"
               "  qcc-eval digits.onnx --calib calib.npz --data test.npz --labels labels \\\n"
               "      --target cortex-m4 --device qemu\n\n"
               "Data: .npz keyed by graph input name (or --input-key INPUT=KEY), .npy, or a folder;\n"
               "a leading sample axis or not; real values in the model's units (--raw: stored integers).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a float or QDQ .onnx model, or a .qir graph")
    p.add_argument("--data", required=True, metavar="DATA", help="the evaluation samples")
    p.add_argument("--labels", metavar="KEY", help="the .npz array of --data holding one class index per sample")
    p.add_argument("--calib", metavar="DATA", help="calibration inputs (a float model needs them)")
    p.add_argument("--scheme", choices=SCHEMES, help="qmn (default for float models) or int8")
    p.add_argument("--bits", choices=("8", "16", "mixed"),
                   help="8 (default), 16, or mixed (8 or 16 per layer, as qcc --bits mixed; both schemes)")
    p.add_argument("--act-max", metavar="NAME=V", action="append", default=[],
                   help="force the range of tensor NAME to [-V, V] (repeatable)")
    p.add_argument("--float-layers", metavar="NAME,...", action="append", default=[],
                   help="keep these layers in float32 as qcc --float-layers does (measure what it buys)")
    p.add_argument("--target", choices=TARGET_NAMES, default="cortex-m4",
                   help="the core the device row builds for (default cortex-m4)")
    p.add_argument("--device", choices=DEVICES, help="also run the generated C on an emulated device")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate the first N samples only")
    p.add_argument("--raw", action="store_true", help="--data holds stored integers, not real values")
    p.add_argument("--input-shape", metavar="NAME=1x49x10x1", action="append", default=[],
                   help="fix the shape of an ONNX input whose dimensions are dynamic (repeatable)")
    add_data_options(p)
    return p


@dataclass
class Row:
    """One line of the table; None where a figure does not apply."""
    run: str
    correct: Optional[int]
    agree: Optional[int]
    sqnr_db: Optional[float]
    bit_exact: Optional[int]


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    noise, signal = float(np.sum((ref - got) ** 2)), float(np.sum(ref ** 2))
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, total: int, stream=None):
        self.stream = stream or sys.stderr
        self.label, self.total, self.shown = label, total, self.stream.isatty() and total > 1

    def update(self, done: int):
        if self.shown:
            width = 30
            fill = width * done // max(self.total, 1)
            self.stream.write(f"\r{self.label:<10} [{'#' * fill}{'.' * (width - fill)}] {done}/{self.total}")
            self.stream.flush()

    def close(self):
        if self.shown:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()


def lower_like_qcc(graph: Graph, args: argparse.Namespace) -> str:
    """Lower ``graph`` in place as ``qcc`` would; returns a label of what ran (e.g. ``qmn q7``)."""
    from qcc.tools.compile import is_lowered, is_qdq, lower, lower_qdq, parse_act_max, parse_float_layers
    float_layers = parse_float_layers(getattr(args, "float_layers", []))
    if float_layers and (is_lowered(graph) or is_qdq(graph)):
        raise InputError(f"--float-layers applies to a float model (calibrated with --calib); {args.model} is "
                         f"{'already lowered' if is_lowered(graph) else 'a QDQ model'}")
    if is_lowered(graph):
        return "already lowered"
    if is_qdq(graph):
        lower_qdq(graph, scheme=args.scheme or "int8", model_path=args.model)
        return "int8, the model's own scales"
    scheme, bits = args.scheme or "qmn", args.bits or "8"
    bits = "mixed" if bits == "mixed" else int(bits)
    lower(graph, calib=args.calib, bits=bits, scheme=scheme, act_max=parse_act_max(args.act_max),
          model_path=args.model, float_output=getattr(args, "float_output", False), float_layers=float_layers)
    kept = f" + {len(float_layers)} float layer{'s' if len(float_layers) != 1 else ''}" if float_layers else ""
    if bits == "mixed":
        return ("qmn mixed q7/q15" if scheme == "qmn" else "affine mixed int8/int16 (16x8)") + kept
    return (f"qmn q{bits - 1}" if scheme == "qmn" else "int8 per-channel") + kept


def read_labels(path: str, key: str, count: int, total: int) -> np.ndarray:
    """Class indices [count] from the ``key`` array of an .npz (one index, or one-hot row, per sample)."""
    if Path(path).suffix != ".npz":
        raise InputError(f"--labels {key} needs --data to be an .npz holding an array '{key}', got {path}")
    with np.load(path, allow_pickle=False) as z:
        if key not in z.files:
            raise InputError(f"--labels: {path} has no array '{key}' (it holds: {', '.join(z.files)})")
        labels = np.asarray(z[key])
    if labels.ndim == 2 and labels.shape[0] == total and labels.dtype.kind in "fiub":
        labels = labels.argmax(axis=1)  # one-hot rows
    if labels.ndim != 1 or labels.shape[0] != total or labels.dtype.kind not in "iu":
        raise InputError(f"--labels: {path}[{key}] has shape {list(labels.shape)} and dtype {labels.dtype}; "
                         f"expected {total} integer class indices ([{total}]) or one-hot rows "
                         f"([{total}, classes]), one per sample of --data")
    return labels[:count]


def onnx_outputs(model: str, graph: Graph, arrays: Dict[str, np.ndarray]) -> Optional[np.ndarray]:
    """The first output of ``model`` in onnxruntime per sample, real values; None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from qcc.sim.qmn import dequantize_array
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feeds = {i.name: i for i in sess.get_inputs()}
    kinds = {"tensor(float)": np.float32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
             "tensor(int16)": np.int16}
    count = next(iter(arrays.values())).shape[0]
    out = []
    bar = Progress("float", count)
    for i in range(count):
        feed = {}
        for v in graph.inputs:
            if v.name not in feeds:
                raise InputError(f"onnxruntime: {model} has no input '{v.name}' "
                                 f"(its inputs: {', '.join(feeds)})")
            feed[v.name] = arrays[v.name][i].astype(kinds.get(feeds[v.name].type, np.float32))
        y = sess.run(None, feed)[0]
        q = graph.outputs[0].type.quant
        if y.dtype.kind in "iu" and q is not None:  # a QDQ model's integer output: its real values
            y = dequantize_array(y, q)
        out.append(np.asarray(y, np.float32))
        bar.update(i + 1)
    bar.close()
    return np.stack(out)


def _stored(v):
    """The integer tensor behind graph output ``v`` (the operand of its final q.dequantize)."""
    return v.producer.operands[0] if v.producer is not None and v.producer.opname == "q.dequantize" else v


def simulate(graph: Graph, arrays: Dict[str, np.ndarray]) -> List[np.ndarray]:
    """Stored integers of every output (before a final dequantize) per sample: [N, *shape] each."""
    import qcc.sim  # noqa: F401  (the integer kernels)
    from qcc.sim.interpreter import run_graph_all
    stored = [_stored(v) for v in graph.outputs]
    if all(v.type.is_float for v in stored):
        raise InputError(f"graph @{graph.name} has float outputs only: nothing quantized to evaluate")
    count = next(iter(arrays.values())).shape[0]
    runs = []
    bar = Progress("simulator", count)
    for i in range(count):
        env = run_graph_all(graph, {k: a[i] for k, a in arrays.items()})
        runs.append([env[v] for v in stored])
        bar.update(i + 1)
    bar.close()
    return [np.stack([r[j] for r in runs]) for j in range(len(stored))]


def real_values(graph: Graph, stored: List[np.ndarray]) -> List[np.ndarray]:
    """The outputs' stored integers as real values (each output's own format)."""
    from qcc.sim.qmn import dequantize_array
    out = []
    for v, a in zip(graph.outputs, stored):
        src = _stored(v)
        q = src.type.quant
        out.append(a.astype(np.float32) if q is None or src.type.is_float
                   else np.stack([dequantize_array(x, q) for x in a]).astype(np.float32))
    return out


def run_device(graph: Graph, arrays: Dict[str, np.ndarray], target: str, device: str, name: str):
    """Build the C for ``target`` and run every sample on ``device``: stored integers per output."""
    from qcc.backend_registry import get_backend
    from qcc.fileio import write_files
    from qcc.sim.qmn import dequantize_array
    backend = get_backend("cmsis")
    harness = importlib.import_module(backend.__name__ + ".harness")
    missing = harness.tools_missing("arm-none-eabi-gcc", "qemu-system-arm", "make")
    if missing:
        raise InputError(f"--device {device} needs {missing} on the PATH")
    gen = backend.generate(graph, name=name, target=target)
    # The firmware reads float records and quantizes them in C; a stored-integer input goes in as its
    # real value (q - zp) * scale, which that quantize maps back to q exactly.
    samples = {}
    for v in graph.inputs:
        a = arrays[v.name]
        samples[v.name] = a if v.type.is_float or v.type.quant is None else \
            np.stack([dequantize_array(x, v.type.quant) for x in a])
    with tempfile.TemporaryDirectory(prefix="qcc-eval-") as tmp:
        folder = Path(tmp)
        write_files({folder / k: data for k, data in gen.files.items()})
        count = harness.write_samples(folder / "in.bin", graph, samples)
        print(f"qcc-eval: running {count} samples on {target} in QEMU ...", file=sys.stderr)
        try:
            harness.run_qemu(folder, folder / "in.bin", folder / "out.bin")
        except RuntimeError as e:
            raise InputError(f"the device run failed: {e}") from None
        got = harness.read_outputs(folder / "out.bin", gen, count)
    return got.quantized


def _argmax(y: np.ndarray) -> np.ndarray:
    return y.reshape(len(y), -1).argmax(axis=1)


def row(run: str, y: np.ndarray, labels: Optional[np.ndarray], ref: Optional[np.ndarray],
        bit_exact: Optional[int] = None) -> Row:
    pred = _argmax(y)
    return Row(run, int((pred == labels).sum()) if labels is not None else None,
               int((pred == _argmax(ref)).sum()) if ref is not None else None,
               sqnr_db(ref, y) if ref is not None else None, bit_exact)


def format_table(rows: Sequence[Row], count: int) -> str:
    def frac(k):
        return "-" if k is None else f"{k}/{count} = {100 * k / max(count, 1):.2f} %"

    def db(x):
        return "-" if x is None else ("inf" if math.isinf(x) else f"{x:.1f} dB")
    header = ("run", "accuracy", "top-1 = float", "output SQNR vs float", "bit-exact vs simulator")
    body = [(r.run, frac(r.correct), frac(r.agree), db(r.sqnr_db), frac(r.bit_exact)) for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _command(args: argparse.Namespace) -> int:
    from qcc.quant.calibration_data import read_samples
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit takes a positive number of samples, got {args.limit}")
    graph = load_graph(args.model, parse_input_shapes(args.input_shape))
    keys = parse_input_keys(args.input_key, graph)
    what = lower_like_qcc(graph, args)
    arrays, data = read_samples(args.data, graph, what="--data", raw=args.raw, keys=keys, limit=args.limit)
    count = next(iter(arrays.values())).shape[0]
    labels = read_labels(args.data, args.labels, count, data.num_samples) if args.labels else None
    out_name = graph.output_names[0]
    print(f"qcc-eval: {args.model} ({what}), output '{out_name}', {count} of {data.num_samples} samples "
          f"of {args.data}" + (f", labels '{args.labels}'" if labels is not None else ""), file=sys.stderr)
    start = time.perf_counter()
    ref = onnx_outputs(args.model, graph, arrays) if Path(args.model).suffix == ".onnx" else None
    rows: List[Row] = []
    if ref is not None:
        kind = "QDQ model, float math between its Q/DQ" if what.startswith("int8, the model") else "float model"
        rows.append(row(f"float: onnxruntime ({kind})", ref, labels, None))
    stored = simulate(graph, arrays)
    sim = real_values(graph, stored)[0]
    rows.append(row(f"simulator ({what})", sim, labels, ref))
    exact_all = True
    if args.device:
        dev_stored = run_device(graph, arrays, args.target, args.device, name=graph.name or "model")
        same = np.ones(count, bool)
        for d, s in zip(dev_stored, stored):
            same &= np.array([np.array_equal(d[i].reshape(-1), s[i].reshape(-1)) for i in range(count)])
        exact_all = bool(same.all())
        dev = real_values(graph, dev_stored)[0]
        rows.append(row(f"device ({args.device} {args.target})", dev, labels, ref, int(same.sum())))
    sys.stdout.write(format_table(rows, count))
    if ref is None:
        print("(no float row: " + ("onnxruntime is not installed" if Path(args.model).suffix == ".onnx"
                                   else "the model is not an ONNX file") + ")")
    print(f"qcc-eval: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if not exact_all and any(op.opname.startswith("f32.") for op in graph.ops):
        # float layers (--float-layers) agree within float rounding, so an integer after one may differ
        # by a step where its float value sits on a rounding boundary: reported, not an error
        print("qcc-eval: note: the device differs from the simulator on some samples; the model has float "
              "layers (--float-layers), which are outside the bit-exact contract", file=sys.stderr)
    elif not exact_all:
        print("qcc-eval: error: the device differs from the simulator (a qcc bug: please report it)",
              file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return _run("qcc-eval", build_parser("qcc-eval"), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
