"""``qcc-data``: convert between ``.npz`` samples and the firmware's record files.

    qcc-data pack   MODEL test.npz -o build/test.bin            # for: make -C build run INPUT=test.bin ...
    qcc-data unpack MODEL build/out.bin -o out.npz              # what make run wrote, as arrays
    qcc-data unpack MODEL build/test.bin -o back.npz --records inputs

The generated ``firmware/NAME_main.c`` (``make run INPUT=... OUTPUT=...``)
reads and writes little-endian records, one per sample:

* input record: every graph input's values as float32, concatenated in input
  order (the firmware quantizes them with ``NAME_quantize_input*``);
* output record: every output's stored integers (int8/int16, the C API's
  type), then every output dequantized to float32; with ``--float-output``
  only the floats.

MODEL is what ``qcc`` compiled, with the same options: a lowered ``.qir``
(``qcc --emit-ir``), a QDQ ``.onnx``, or a float model with ``--calib`` (it is
lowered again, deterministically, to learn the output formats). The record
layout comes from the backend itself (its ``harness`` module, found through
the backend registry), so it cannot drift from the C.

``pack`` reads any layout the other tools take (the shared reader: ``.npz``
keyed by input name, ``.npy``, a folder; a leading sample axis or not; real
values, or ``--raw`` stored integers). ``unpack`` writes real values keyed by
name (``--raw`` adds nothing for inputs; for outputs it writes the stored
integers instead of the floats).
"""
from __future__ import annotations

import argparse
import importlib
import io
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from qcc.errors import InputError
from qcc.tools.cli import _run, add_data_options, load_graph, parse_input_keys, parse_input_shapes


def build_parser(prog: str = "qcc-data") -> argparse.ArgumentParser:
    from qcc.tools.compile import SCHEMES
    p = argparse.ArgumentParser(
        prog=prog, description="Convert samples between .npz and the firmware's record files (make run).",
        epilog="examples:\n"
               "  qcc-data pack build/digits.qir examples/digits/test.npz -o build/test.bin\n"
               "  make -C build run INPUT=test.bin OUTPUT=out.bin\n"
               "  qcc-data unpack build/digits.qir build/out.bin -o out.npz",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("pack", "unpack"), help="pack: .npz -> records; unpack: records -> .npz")
    p.add_argument("model", help="the model as qcc compiled it: lowered .qir, QDQ .onnx, or float model + --calib")
    p.add_argument("file", help="pack: the samples (.npz/.npy/folder); unpack: a record file")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the record file or .npz to write")
    p.add_argument("--records", choices=("inputs", "outputs"), default="outputs",
                   help="unpack: the file holds input records (as pack writes) or output records "
                        "(as make run writes; the default)")
    p.add_argument("--raw", action="store_true",
                   help="pack: the samples are stored integers; unpack outputs: write the stored integers")
    p.add_argument("--float-output", action="store_true", help="the model was compiled with --float-output")
    p.add_argument("--limit", type=int, metavar="N", help="pack: the first N samples only")
    p.add_argument("--calib", metavar="DATA", help="calibration inputs of a float model (as given to qcc)")
    p.add_argument("--scheme", choices=SCHEMES, help="as given to qcc")
    p.add_argument("--bits", type=int, choices=(8, 16), help="as given to qcc")
    p.add_argument("--act-max", metavar="NAME=V", action="append", default=[], help="as given to qcc")
    p.add_argument("--input-shape", metavar="NAME=1x49x10x1", action="append", default=[],
                   help="as given to qcc")
    add_data_options(p)
    return p


def _backend(graph, float_output: bool):
    """The cmsis backend's generated model (for the record layout) and its harness module."""
    from qcc.backend_registry import get_backend
    backend = get_backend("cmsis")
    harness = importlib.import_module(backend.__name__ + ".harness")
    return backend.generate(graph, name=graph.name or "model", float_output=float_output), harness


def _command(args: argparse.Namespace) -> int:
    from qcc.fileio import write_files
    from qcc.quant.calibration_data import read_samples
    from qcc.sim.qmn import dequantize_array
    from qcc.tools.eval import lower_like_qcc
    graph = load_graph(args.model, parse_input_shapes(args.input_shape))
    lower_like_qcc(graph, args)
    gen, harness = _backend(graph, args.float_output)
    out = Path(args.output)
    if args.action == "pack":
        if args.limit is not None and args.limit < 1:
            raise InputError(f"--limit takes a positive number of samples, got {args.limit}")
        arrays, _ = read_samples(args.file, graph, what="samples", raw=args.raw,
                                 keys=parse_input_keys(args.input_key, graph), limit=args.limit)
        # Records are real values; a stored-integer input goes in as (q - zp) * scale, which the
        # firmware's quantize maps back to q exactly.
        floats = {v.name: arrays[v.name] if v.type.is_float or v.type.quant is None else
                  np.stack([dequantize_array(x, v.type.quant) for x in arrays[v.name]]) for v in graph.inputs}
        with tempfile.TemporaryDirectory(prefix="qcc-data-") as tmp:  # then written atomically
            count = harness.write_samples(Path(tmp) / "in.bin", graph, floats)
            records = (Path(tmp) / "in.bin").read_bytes()
        write_files({out: records})
        print(f"qcc-data: wrote {count} input records of {len(records) // max(count, 1)} bytes to {out}",
              file=sys.stderr)
        return 0
    src = Path(args.file)
    if not src.is_file():
        raise InputError(f"no such record file: {args.file}")
    data = src.read_bytes()
    if args.records == "inputs":
        sizes = [int(np.prod(v.shape)) for v in graph.inputs]
        record = 4 * sum(sizes)
        count = _count(len(data), record, args.file, "input")
        flat = np.frombuffer(data, "<f4").reshape(count, -1)
        arrays, at = {}, 0
        for v, n in zip(graph.inputs, sizes):
            arrays[v.name] = flat[:, at:at + n].reshape((count, *v.shape)).astype(np.float32)
            at += n
    else:
        record = sum(t.value.type.size * (0 if gen.float_output else t.value.type.np_dtype.itemsize) +
                     t.value.type.size * 4 for t in gen.plan.outputs)
        count = _count(len(data), record, args.file, "output")
        got = harness.read_outputs(src, gen, count)
        if args.raw and gen.float_output:
            raise InputError("--raw: a --float-output model writes only floats; there are no stored integers")
        parts = got.quantized if args.raw else got.floats
        arrays = {t.name: a for t, a in zip(gen.plan.outputs, parts)}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_files({out: buf.getvalue()})
    print(f"qcc-data: wrote {count} samples ({', '.join(arrays)}) to {out}", file=sys.stderr)
    return 0


def _count(size: int, record: int, path: str, kind: str) -> int:
    if record == 0 or size % record:
        raise InputError(f"{path} holds {size} bytes, not a whole number of {record}-byte {kind} records "
                         f"of this model (check the model, --records and --float-output)")
    return size // record


def main(argv: Optional[Sequence[str]] = None) -> int:
    return _run("qcc-data", build_parser("qcc-data"), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
