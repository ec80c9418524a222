"""The command-line tools: ``qcc-opt`` (run passes on IR), ``qcc-sim`` (run a model) and ``qcc``.

All three share one error policy: a ``QccError`` prints its message on stderr
(``qcc-opt: error: ...``, or ``file:line:col: error: ...`` for bad IR text) and
exits with the error's ``exit_code`` (1, or 2 for a model qcc does not
support); no traceback. Anything else escaping is a bug and keeps its traceback.

``qcc-opt`` prints the resulting IR on stdout unless ``-o`` is given. On
stdout, constants with more than 16 elements are elided as ``@resource``
names (their data is not printed, so that text does not parse back on its
own); ``--print-constants-whole`` prints every constant in full. With
``-o out.qir`` the file is written atomically with its large constants in the
sidecar ``out.npz`` (``--print-constants-whole`` puts them all in the text).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from qcc.errors import InputError, ParseError, QccError
from qcc.ir.graph import Graph

ELIDE_OVER = 16  # elements; larger constants print as resources on stdout


# ---------------------------------------------------------------- shared plumbing
def _run(prog: str, parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace], int],
         argv: Optional[Sequence[str]]) -> int:
    args = parser.parse_args(argv)  # usage errors exit 2 through argparse, as usual
    try:
        return command(args) or 0
    except QccError as e:
        _report(prog, e)
        return e.exit_code
    except BrokenPipeError:  # `qcc-opt ... | head`: not an error of ours
        try:
            sys.stdout = open(io.devnull, "w")  # keep Python's exit-time flush quiet
        except OSError:
            pass
        return 0
    except MemoryError as e:  # a tensor too large for this machine (numpy's _ArrayMemoryError says its size)
        what = str(e).strip() or "a tensor too large for this machine"
        print(f"{prog}: error: out of memory: {what}; is a tensor of the model (or an --input-shape) "
              f"far larger than intended?", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _report(prog: str, e: QccError):
    text = str(e)
    if not isinstance(e, ParseError):  # a parse error already reads `file:line:col: error: ...`
        text = f"{prog}: error: {text}"
    print(text, file=sys.stderr)


def _add_plugin_option(p: argparse.ArgumentParser):
    p.add_argument("--load-pass-plugin", metavar="FILE", action="append", default=[],
                   help="import a Python file that registers passes (repeatable)")


def _add_pipeline_option(p: argparse.ArgumentParser, help: str, default: Optional[str] = ""):
    p.add_argument("-p", "--pipeline", "--passes", dest="pipeline", default=default, metavar="PIPELINE",
                   help=help)


def _load_plugins(paths: Sequence[str]):
    from qcc.transforms.passmanager import load_pass_plugin
    for path in paths:
        load_pass_plugin(path)


@contextlib.contextmanager
def _writing(path: str):
    """Turn a failure to write ``path`` (no such folder, no permission) into a message."""
    try:
        yield
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None


def load_graph(path: str, input_shapes: Optional[Dict[str, Tuple[int, ...]]] = None) -> Graph:
    """A graph from a .qir file, an .onnx model, or IR text on stdin ('-')."""
    from qcc.ir.parser import parse, parse_file
    if path == "-":
        return parse(sys.stdin.read(), filename="<stdin>")
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such file: {path}")
    if p.is_dir():
        raise InputError(f"{path} is a directory, expected a .qir or .onnx file")
    if p.suffix == ".qir":
        return parse_file(p)
    if p.suffix == ".onnx":
        from qcc.frontend.loader import load_model
        return load_model(p, input_shapes or None)
    raise InputError(f"cannot tell the format of {path}: expected a .qir or .onnx file")


def _same_file(path) -> str:
    """A path's identity for overlap checks: absolute, symlinks resolved where they exist."""
    return str(Path(path).expanduser().resolve())


def _check_output_paths(model: Optional[str], outputs: Sequence[Tuple[str, Optional[str]]],
                        sidecar_of: Optional[str] = None):
    """Refuse output paths that would overwrite the input model or one another (a .qir's sidecar .npz included)."""
    from qcc.ir.printer import sidecar_path
    taken = {_same_file(model): "the input model"} if model and model != "-" else {}
    for flag, path in outputs:
        if not path:
            continue
        paths = [path] + ([str(sidecar_path(path))] if flag == sidecar_of else [])
        for p in paths:
            if _same_file(p) in taken:
                raise InputError(f"{flag} {path} would overwrite {taken[_same_file(p)]} ({p}); "
                                 f"give it a path of its own")
        taken.update({_same_file(p): f"the {flag} file" for p in paths})


# ---------------------------------------------------------------- qcc-opt
def _opt_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Run a pass pipeline on a model and print or write the resulting IR.",
        epilog="examples:\n"
               "  qcc-opt net.qir -p canonicalize,dce\n"
               "  qcc-opt model.onnx -p 'const-fold,canonicalize' -o net.qir\n"
               "  qcc-opt net.qir -p my-pass --load-pass-plugin my_pass.py\n\n"
               "Without -o the IR goes to stdout with constants of more than 16 elements\n"
               "elided as @resource names; -o writes OUT.qir plus its constants in OUT.npz.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", help="a .qir or .onnx file ('-' reads IR text from stdin)")
    _add_pipeline_option(p, "passes to run, e.g. 'fold-batchnorm,calibrate{method=percentile,p=99.99}'")
    p.add_argument("-o", "--output", metavar="OUT.qir", help="write the IR here (and OUT.npz for large constants)")
    p.add_argument("--print-ir-after-all", action="store_true", help="print the IR to stderr after every pass")
    p.add_argument("--print-ir-after", metavar="PASS", action="append", default=[],
                   help="print the IR to stderr after each run of PASS (repeatable)")
    _add_plugin_option(p)
    p.add_argument("--list-passes", action="store_true", help="list registered passes and pipelines, then exit")
    constants = p.add_mutually_exclusive_group()
    constants.add_argument("--elide-constants", dest="elide", action="store_true", default=True,
                           help="print constants over 16 elements as @resource names (default)")
    constants.add_argument("--print-constants-whole", dest="elide", action="store_false",
                           help="print every constant in full")
    p.add_argument("--timing", action="store_true", help="print the time each pass took to stderr")
    p.add_argument("--pass-stats", action="store_true", help="print each pass's statistics to stderr")
    _add_quant_options(p)
    _add_input_shape_option(p)
    p.add_argument("--emit-onnx", metavar="FILE.onnx",
                   help="also write the resulting graph as ONNX (quantized values in QDQ form, for "
                        "onnxruntime or Netron) and FILE.onnx.json (every tensor's format); the IR then "
                        "goes only to -o, not to stdout")
    p.add_argument("--split-input-file", action="store_true",
                   help="run each '// -----' separated part of a .qir file on its own and join the "
                        "results with '// -----' (as mlir-opt does)")
    p.add_argument("--verify-diagnostics", action="store_true",
                   help="check the errors against the input's '// expected-error {{text}}' comments "
                        "instead of reporting them; exit 0 when they match")
    return p


def _add_input_shape_option(p: argparse.ArgumentParser):
    p.add_argument("--input-shape", metavar="NAME=1x49x10x1", action="append", default=[],
                   help="fix the shape of an ONNX input whose dimensions are dynamic (repeatable)")


def parse_input_shapes(specs: Sequence[str]) -> Dict[str, Tuple[int, ...]]:
    """``NAME=1x49x10x1`` options as {name: shape}."""
    shapes = {}
    for spec in specs:
        name, sep, dims = spec.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise InputError(f"--input-shape takes NAME=DxDx... with positive dimensions, got '{spec}'")
        shapes[name] = shape
    return shapes


def _add_calib_options(p: argparse.ArgumentParser):
    """--calib / --act-max: handed to passes as their context (keys calib, act_max)."""
    p.add_argument("--calib", metavar="DATA", help="calibration data (.npz keyed by input name, .npy or a folder)")
    p.add_argument("--act-max", metavar="NAME=M", action="append", default=[],
                   help="force the range [-M, M] on a tensor (repeatable, or a .json file)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="calibrate in N processes (0: one per CPU); results equal a single process's")


def _add_quant_options(p: argparse.ArgumentParser):
    """--calib / --act-max / --report."""
    _add_calib_options(p)
    p.add_argument("--report", metavar="REPORT.md",
                   help="write a per-layer quantization report (format, range, SQNR vs float) here")
    p.add_argument("--report-samples", type=int, metavar="N",
                   help="calibration samples the report evaluates (default: all, up to 256; 0: all)")


MAX_JOBS = 256  # calibration processes; more only exhausts the machine


def check_jobs(jobs: int):
    if not 0 <= jobs <= MAX_JOBS:
        raise InputError(f"--jobs takes 0 (one process per CPU) to {MAX_JOBS}, got {jobs}")


def _check_calib_options(args: argparse.Namespace):
    """--jobs and --act-max checked where they are read, before any model is loaded."""
    from qcc.quant.calibration import load_act_max
    check_jobs(args.jobs)
    load_act_max(args.act_max or None)


def _set_context(passes, args: argparse.Namespace):
    context = {"calib": getattr(args, "calib", None), "act_max": list(getattr(args, "act_max", []) or []) or None,
               "jobs": getattr(args, "jobs", 1)}
    for p in passes:
        p.context = context


def _run_with_report(pm, graph, args):
    """Run the pipeline; with --report, compare the quantized graph with its float self per layer."""
    if not getattr(args, "report", None):
        return pm.run(graph)
    from qcc.tools.report import quantization_report, run_keeping_float
    if "calibrate" not in [p.name for p in pm.passes] or not args.calib:
        raise InputError("--report needs a pipeline that quantizes (with 'calibrate') and --calib data")
    report, float_graph = run_keeping_float(pm, graph)
    if args.report_samples is not None and args.report_samples < 0:
        raise InputError(f"--report-samples takes a number of samples (0: all), got {args.report_samples}")
    text = quantization_report(float_graph, graph, args.calib, args.report_samples)
    with _writing(args.report):
        Path(args.report).write_text(text)
    return report


def list_passes() -> str:
    """The --list-passes text: every pass with its summary and options, then the pipelines."""
    from qcc.transforms.passmanager import _type_name, describe_pass_options, registered_passes, registered_pipelines
    lines = ["Passes:"]
    for name, cls in registered_passes().items():
        lines.append(f"  {name:<24} {cls.summary()}")
        lines.extend(f"      {text}" for text in describe_pass_options(cls))
    pipelines = registered_pipelines()
    lines.append("Pipelines:")
    if not pipelines:
        lines.append("  (none)")
    for name, pl in pipelines.items():
        opts = ", ".join(f"{k}: {_type_name(t)}" for k, t in pl.options.items())
        lines.append(f"  {name:<24} {pl.summary}" + (f" (options: {opts})" if opts else ""))
    return "\n".join(lines) + "\n"


def _opt(args: argparse.Namespace) -> int:
    from qcc.transforms.passmanager import PassManager
    _load_plugins(args.load_pass_plugin)
    if args.list_passes:
        sys.stdout.write(list_passes())
        return 0
    if not args.input:
        raise InputError("no input file given (see --help)")
    elide_over = ELIDE_OVER if args.elide else None
    _check_calib_options(args)
    _check_output_paths(args.input, [("-o", args.output), ("--emit-onnx", args.emit_onnx),
                                     ("--report", args.report)], sidecar_of="-o")
    if args.split_input_file or args.verify_diagnostics:
        return _opt_pieces(args, elide_over)
    pm = PassManager.parse(args.pipeline, print_ir_after_all=args.print_ir_after_all,
                           print_ir_after=args.print_ir_after, stream=sys.stderr, elide_over=elide_over)
    graph = load_graph(args.input, parse_input_shapes(args.input_shape))
    _set_context(pm.passes, args)
    report = _run_with_report(pm, graph, args)
    if args.timing:
        sys.stderr.write(report.format_timing())
    if args.pass_stats:
        for key, stats in report.stats().items():
            shown = {k: v for k, v in stats.items() if k != "match_failures"}
            sys.stderr.write(f"// {key}: {shown}\n")
    if args.emit_onnx:
        from qcc.export.onnx_export import write_onnx
        write_onnx(graph, args.emit_onnx)
    if args.output:
        from qcc.ir.printer import write_qir
        with _writing(args.output):
            write_qir(graph, args.output, elide_over=elide_over)
    elif not args.emit_onnx:
        from qcc.ir.printer import print_graph
        sys.stdout.write(print_graph(graph, elide_over=elide_over))
        sys.stdout.flush()
    return 0


def _opt_pieces(args: argparse.Namespace, elide_over: Optional[int]) -> int:
    """qcc-opt over the pieces of a .qir file (--split-input-file), checking --verify-diagnostics."""
    from qcc.ir.parser import parse
    from qcc.ir.printer import print_graph
    from qcc.tools.diagnostics import expected_errors, split_input, unmet_expectations
    from qcc.transforms.passmanager import PassManager
    for flag, given in (("--emit-onnx", args.emit_onnx), ("--report", getattr(args, "report", None))):
        if given:
            raise InputError(f"{flag} writes one model; it does not combine with --split-input-file "
                             f"or --verify-diagnostics")
    if args.input == "-":
        name, text = "<stdin>", sys.stdin.read()
    else:
        if Path(args.input).suffix != ".qir":
            raise InputError(f"--split-input-file and --verify-diagnostics read a .qir file, got {args.input}")
        name = args.input
        try:
            text = Path(args.input).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{args.input}: cannot read: {e}") from None
    outputs, problems, failed = [], [], False
    for piece in split_input(text, args.split_input_file):
        pm = PassManager.parse(args.pipeline, print_ir_after_all=args.print_ir_after_all,
                               print_ir_after=args.print_ir_after, stream=sys.stderr, elide_over=elide_over)
        _set_context(pm.passes, args)
        error = None
        try:
            graph = parse(piece.text, filename=name)
            pm.run(graph)
            outputs.append(print_graph(graph, elide_over=elide_over))
        except QccError as e:
            error = e
        if args.verify_diagnostics:
            problems += unmet_expectations(name, expected_errors(piece), None if error is None else str(error))
        elif error is not None:
            _report("qcc-opt", error)
            failed = True
    joined = "// -----\n".join(outputs)
    if args.output:
        from qcc.fileio import write_files
        with _writing(args.output):
            write_files({args.output: joined})
    else:
        sys.stdout.write(joined)
        sys.stdout.flush()
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems or failed else 0


def opt_main(argv: Optional[Sequence[str]] = None) -> int:
    return _run("qcc-opt", _opt_parser("qcc-opt"), _opt, argv)


# ---------------------------------------------------------------- qcc-sim
def _sim_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Run a model on the float interpreter.",
        epilog="Inputs: an .npz whose keys are the graph input names, one .npy for a\n"
               "single-input graph, or a folder of .npy files (as qcc --calib and qcc-eval --data\n"
               "take). A leading sample axis runs a batch of samples ([N, *shape], or\n"
               "[N, *shape[1:]] when shape[0] is 1). Values are real, in the model's units (a\n"
               "QDQ model's int8 input is quantized with its scale); --raw gives stored integers.\n"
               "The outputs are saved under the graph output names.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a .qir or .onnx file")
    p.add_argument("--inputs", required=True, metavar="IN.npz|IN.npy", help="input arrays")
    p.add_argument("-o", "--output", metavar="OUT.npz", help="save the outputs here (default: print them)")
    _add_pipeline_option(p, "passes to run on the model before simulating it (default: none; for a QDQ "
                              "model its int8 lowering, -p int8)", default=None)
    _add_plugin_option(p)
    _add_calib_options(p)
    _add_input_shape_option(p)
    p.add_argument("--raw", action="store_true",
                   help="stored integers in and out: the inputs hold the integers of the graph's quantized "
                        "inputs, and the outputs are the integer tensors before their dequantize (default: "
                        "real values in the model's units both ways; a QDQ model's int8 input is quantized "
                        "with its own scale)")
    add_data_options(p)
    return p


def add_data_options(p: argparse.ArgumentParser):
    """--raw / --input-key: how sample files map to graph inputs (qcc-sim, qcc-eval)."""
    p.add_argument("--input-key", metavar="[INPUT=]KEY", action="append", default=[],
                   help="read graph input INPUT from the .npz array KEY (KEY alone: the only input)")


def parse_input_keys(specs: Sequence[str], graph: Graph) -> Dict[str, str]:
    """``INPUT=KEY`` (or ``KEY`` for a single-input graph) options as {input name: key}."""
    keys = {}
    for spec in specs:
        name, sep, key = spec.rpartition("=")
        if not sep:
            if len(graph.inputs) != 1:
                raise InputError(f"--input-key {spec}: graph @{graph.name} has {len(graph.inputs)} inputs; "
                                 f"write INPUT=KEY")
            name = graph.inputs[0].name
        if not name or not key:
            raise InputError(f"--input-key takes INPUT=KEY, got '{spec}'")
        keys[name] = key
    return keys


def load_inputs(path: str, graph: Graph, raw: bool = False, what: str = "inputs",
                keys: Optional[Dict[str, str]] = None):
    """Input arrays ``{name: [N, *shape]}`` for ``graph`` through the shared reader
    (``qcc.quant.calibration_data``: the layouts and units every tool accepts), and the opened data.

    Real values in the model's units by default (a QDQ model's integer input
    is quantized with its own scale); ``raw``: the stored integers.
    """
    from qcc.quant.calibration_data import read_samples
    arrays, data = read_samples(path, graph, what=what, raw=raw, keys=keys)
    if data.extra_keys:  # datasets often carry labels beside the inputs
        print(f"note: ignoring {path} keys that name no graph input: {', '.join(data.extra_keys)}",
              file=sys.stderr)
    return arrays, data


def _sim(args: argparse.Namespace) -> int:
    from qcc.sim.interpreter import run_batched
    from qcc.transforms.passmanager import PassManager
    _load_plugins(args.load_pass_plugin)
    _check_calib_options(args)
    _check_output_paths(args.model, [("-o", args.output)])
    if args.output and _same_file(args.inputs) == _same_file(args.output):
        raise InputError(f"-o {args.output} would overwrite the --inputs file; give it a path of its own")
    graph = load_graph(args.model, parse_input_shapes(args.input_shape))
    pipeline = args.pipeline
    if pipeline is None:
        from qcc.frontend.qdq_lifters import is_qdq
        # A QDQ model runs as qcc compiles it: its int8 lowering (TFLite Micro's arithmetic).
        # -p '' runs the fake-quant float graph as written instead.
        pipeline = "int8" if is_qdq(graph) else ""
        if pipeline:
            print(f"qcc-sim: note: {args.model} is a QDQ model: simulating its int8 lowering (-p int8), "
                  f"as qcc compiles it; -p '' runs the fake-quant float graph", file=sys.stderr)
    pm = PassManager.parse(pipeline)
    _set_context(pm.passes, args)
    pm.run(graph)
    arrays, data = load_inputs(args.inputs, graph, raw=args.raw, keys=parse_input_keys(args.input_key, graph))
    if args.raw:
        _output_raw_integers(graph)
    outputs = run_batched(graph, arrays)
    if not args.raw:  # real values out, as in: a QDQ model's int8 output is dequantized with its scale
        outputs = {k: _real(a, v) for (k, a), v in zip(outputs.items(), graph.outputs)}
    if data.single:  # one sample given without a sample axis: outputs without one too
        outputs = {k: a[0] for k, a in outputs.items()}
    if args.output:
        from qcc.fileio import write_files
        buf = io.BytesIO()
        np.savez(buf, **outputs)
        with _writing(args.output):
            write_files([(Path(args.output), buf.getvalue())])
    else:
        for name, a in outputs.items():
            print(f"{name}: {a.dtype} {list(a.shape)}")
            print(np.array2string(a, threshold=64))
    return 0


def _real(a: np.ndarray, value) -> np.ndarray:
    """Stored integers of a quantized graph output as the real values they stand for."""
    from qcc.sim.qmn import dequantize_array
    if value.type.is_float or value.type.quant is None:
        return a
    if a.ndim == value.type.rank + 1:  # a per-axis format counts axes of one sample
        return np.stack([dequantize_array(x, value.type.quant) for x in a]).astype(np.float32)
    return dequantize_array(a, value.type.quant).astype(np.float32)


def _output_raw_integers(graph: Graph):
    """Make each dequantized output of ``graph`` give its stored integers instead."""
    raw = [v.producer.operands[0] if v.producer is not None and v.producer.opname == "q.dequantize" else v
           for v in graph.outputs]
    if all(v.type.is_float for v in raw):
        raise InputError(f"--raw needs a quantized graph; the outputs of @{graph.name} are float "
                         f"(run a quantizing pipeline first, e.g. -p qmn --calib DATA)")
    graph.set_outputs(raw, graph.output_names)


def sim_main(argv: Optional[Sequence[str]] = None) -> int:
    return _run("qcc-sim", _sim_parser("qcc-sim"), _sim, argv)


def main(argv: Optional[List[str]] = None) -> int:  # `python -m qcc.tools.cli` runs qcc-opt
    return opt_main(argv)


if __name__ == "__main__":
    sys.exit(main())
