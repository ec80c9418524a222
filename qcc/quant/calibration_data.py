"""Calibration data: stream samples for a graph's inputs from .npz, .npy or folders.

A *sample* is one value per graph input, shaped exactly like that input (a
graph whose input is ``1x49x10x1`` takes samples of shape ``1x49x10x1``).
Batches stack samples along a new leading axis: ``{name: [b, *input_shape]}``.

Accepted layouts (``path`` is one of):

* ``data.npz``: one array per graph input, keyed by the input's name, or by
  another key named in ``keys`` (``--input-key INPUT=KEY``); other keys, e.g.
  ``labels``, are ignored;
* ``data.npy``: the samples of the only input of a single-input graph;
* a folder of ``.npy`` files (name order) for a single-input graph, or a
  folder with one subfolder per input, named after the input (characters
  other than ``[A-Za-z0-9_.-]`` may be written ``_``); the subfolders must
  hold the same file names, which pair samples across inputs.

Each array holds samples in one of these shapes, for an input of shape ``I``:

* ``[N, *I]``: N samples (one more leading axis than the input);
* ``[N, *I[1:]]`` when ``I[0] == 1``: N samples without their batch axis;
* ``I`` itself, or ``I[1:]`` when ``I[0] == 1``: one sample.

Units (one convention for every tool: ``qcc --calib``, ``qcc-sim --inputs``,
``qcc-eval --data``): arrays hold real values in the model's own units. An
input the model stores as integers (a QDQ model's int8 input, scale ``s``,
zero point ``z``) is quantized on the way in exactly as the C API does::

    q = clamp(round_half_away(f32(x) / f32(s)) + z)

With ``raw=True`` the arrays hold the stored integers instead: an integer
input takes them as they are (range checked), and a float input that the
graph quantizes first (a lowered graph) gets them dequantized,
``x = (q - z) * s``, which that quantize maps back to ``q`` exactly.

Streaming: ``.npy`` files are memory-mapped and ``.npz`` members are read
sequentially from the zip stream (stored or deflated alike), so memory stays
at about one batch whatever the dataset size. A Fortran-ordered ``.npz``
member cannot be streamed by rows and is read whole.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from qcc.errors import InputError
from qcc.ir.graph import Graph

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _read_header(fp, label: str, what: str = "calibration data") -> Tuple[Tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from the header of an .npy stream."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            return fmt.read_array_header_1_0(fp)
        if version == (2, 0):
            return fmt.read_array_header_2_0(fp)
        return fmt._read_array_header(fp, version)  # (3, 0): utf-8 header, no public reader
    except Exception as e:
        raise InputError(f"{what} '{label}' is not a readable .npy array: {e}") from None


def _single_sample(shape: Tuple[int, ...], want: Tuple[int, ...]) -> bool:
    """True when an array of ``shape`` is one sample of an input of shape ``want`` (no sample axis)."""
    return shape == want or (bool(want) and want[0] == 1 and shape == want[1:])


def _sample_layout(shape: Tuple[int, ...], want: Tuple[int, ...], label: str, input_name: str,
                   what: str = "calibration data") -> int:
    """How many samples an array of ``shape`` holds for an input of shape ``want``."""
    if len(shape) == len(want) + 1 and shape[1:] == want:
        return shape[0]
    if want and want[0] == 1 and len(shape) == len(want) and shape[1:] == want[1:]:
        return shape[0]
    if _single_sample(shape, want):
        return 1
    hint = f"[N, {', '.join(map(str, want))}]"
    if want and want[0] == 1:
        hint += f" or [N, {', '.join(map(str, want[1:]))}]"
    raise InputError(f"{what} '{label}' has shape {list(shape)}, but graph input "
                     f"'{input_name}' has shape {list(want)}: expected {hint} (N samples), "
                     f"or one sample shaped like the input")


def _check_dtype(dtype: np.dtype, target: np.dtype, label: str, input_name: str, what: str = "calibration data"):
    ok = dtype.kind in "fiu" if target.kind == "f" else dtype.kind in "iu"
    if not ok:
        want = "a float or integer" if target.kind == "f" else "an integer (stored values, --raw)"
        raise InputError(f"{what} '{label}' has dtype {dtype}, graph input '{input_name}' "
                         f"({target}) needs {want} array")


class _Segment:
    """``n`` consecutive samples stored in one array, read front to back."""

    def __init__(self, label: str, n: int, opener: Callable[[], Tuple[Callable[[int], np.ndarray], Callable]]):
        self.label, self.n, self._opener, self._read, self._close = label, n, opener, None, None
        self.single = False  # one sample without a sample axis

    def read(self, k: int) -> np.ndarray:
        if self._read is None:  # files open only when their samples are due
            self._read, self._close = self._opener()
        return self._read(k)

    def close(self):
        if self._close is not None:
            self._close()
        self._read = self._close = None


def _npy_segment(path: Path, shape_in: Tuple[int, ...], input_name: str, dtype: np.dtype,
                 what: str = "calibration data") -> _Segment:
    label = str(path)
    try:
        with open(path, "rb") as f:
            shape, _, file_dtype = _read_header(f, label, what)
    except OSError as e:
        raise InputError(f"cannot read {what} '{label}': {e.strerror}") from None
    _check_dtype(file_dtype, dtype, label, input_name, what)
    n = _sample_layout(tuple(shape), shape_in, label, input_name, what)

    def opener():
        try:  # a view: nothing is read yet
            view = np.load(path, mmap_mode="r").reshape((n, *shape_in))
        except (OSError, ValueError) as e:
            raise InputError(f"{what} '{label}' is truncated or unreadable: {e}") from None
        pos = [0]

        def read(k):
            out = np.array(view[pos[0]:pos[0] + k], dtype=dtype)
            pos[0] += k
            return out
        return read, lambda: None
    seg = _Segment(label, n, opener)
    seg.single = _single_sample(tuple(shape), shape_in)
    return seg


def _npz_segment(path: Path, key: str, shape_in: Tuple[int, ...], dtype: np.dtype,
                 what: str = "calibration data", input_name: str = "") -> _Segment:
    label = f"{path}[{key}]"
    with zipfile.ZipFile(path) as z:
        with z.open(key + ".npy") as f:
            shape, fortran, file_dtype = _read_header(f, label, what)
    _check_dtype(file_dtype, dtype, label, input_name or key, what)
    n = _sample_layout(tuple(shape), shape_in, label, input_name or key, what)
    row = int(np.prod(shape_in, dtype=np.int64))

    def opener():
        z = zipfile.ZipFile(path)
        f = z.open(key + ".npy")
        _read_header(f, label)
        if fortran:  # column-major data cannot be cut into samples while streaming
            whole = np.lib.format.read_array(z.open(key + ".npy")).reshape((n, *shape_in))
            pos = [0]

            def read_whole(k):
                out = np.array(whole[pos[0]:pos[0] + k], dtype=dtype)
                pos[0] += k
                return out
            return read_whole, z.close

        def read(k):
            nbytes = k * row * file_dtype.itemsize
            buf = f.read(nbytes)
            if len(buf) != nbytes:
                raise InputError(f"{what} '{label}' is truncated")
            return np.frombuffer(buf, file_dtype).reshape((k, *shape_in)).astype(dtype)
        return read, z.close
    seg = _Segment(label, n, opener)
    seg.single = _single_sample(tuple(shape), shape_in)
    return seg


class _InputStream:
    """The samples of one graph input, possibly spread over several files."""

    def __init__(self, name: str, segments: List[_Segment]):
        self.name, self.segments = name, segments
        self.n = sum(s.n for s in segments)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        pending: List[np.ndarray] = []
        have = 0
        for seg in self.segments:
            left = seg.n
            while left:
                k = min(left, batch_size - have)
                pending.append(seg.read(k))
                have, left = have + k, left - k
                if have == batch_size:
                    yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                    pending, have = [], 0
            seg.close()
        if pending:
            yield np.concatenate(pending)


def _folder_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".npy" and p.is_file())


def _open_folder(folder: Path, graph: Graph) -> Dict[str, List[Path]]:
    subdirs = {p.name: p for p in folder.iterdir() if p.is_dir()}
    found = {}
    for v in graph.inputs:
        for cand in (v.name, _UNSAFE.sub("_", v.name)):
            if cand in subdirs:
                found[v.name] = _folder_files(subdirs[cand])
                break
    if len(graph.inputs) == 1 and not found:
        files = _folder_files(folder)
        if not files:
            raise InputError(f"calibration folder '{folder}' holds no .npy files "
                             f"(nor a subfolder named '{graph.inputs[0].name}')")
        return {graph.inputs[0].name: files}
    missing = [v.name for v in graph.inputs if v.name not in found]
    if missing:
        raise InputError(f"calibration folder '{folder}' needs one subfolder per graph input; "
                         f"missing: {', '.join(missing)} (found: {', '.join(sorted(subdirs)) or 'none'})")
    names = {k: [p.name for p in files] for k, files in found.items()}
    first = graph.inputs[0].name
    for k, files in names.items():
        if files != names[first]:
            odd = sorted(set(files) ^ set(names[first]))
            raise InputError(f"calibration subfolders '{first}' and '{k}' hold different files "
                             f"(e.g. {', '.join(odd[:5])}); samples pair by file name")
        if not files:
            raise InputError(f"calibration subfolder for input '{k}' holds no .npy files")
    return found


class _Units:
    """Turns the arrays read for one graph input into the values the graph takes (module doc: Units)."""

    def __init__(self, graph: Graph, value, raw: bool, what: str):
        from qcc.ir.types import storage_range
        self.name, self.dtype, self.what = value.name, value.type.np_dtype, what
        self.quant, self.dequantize = value.type.quant, False
        if raw and value.type.is_float:
            users = graph.users(value)
            formats = {repr(op.result.type.quant) for op in users}
            if not users or any(op.opname != "q.quantize" for op in users) or len(formats) != 1:
                raise InputError(f"raw (stored integer) inputs need a quantized graph: input '{value.name}' "
                                 f"of @{graph.name} is float and not quantized by the graph first; "
                                 f"give real values (leave out --raw)")
            self.quant, self.dequantize = users[0].result.type.quant, True
            self.store = users[0].result.type
        else:
            self.store = value.type
        self.raw = raw
        # What the files are read as: floats in model units, or the stored integers.
        self.read_dtype = np.dtype(np.float32) if (value.type.is_float and not raw) or \
            (not raw and self.quant is not None) else self.store.np_dtype
        self.range = storage_range(self.store.dtype) if raw else None

    def __call__(self, a: np.ndarray) -> np.ndarray:
        from qcc.sim.qmn import dequantize_array, quantize_array
        if self.raw:
            lo, hi = self.range
            if a.size and (a.min() < lo or a.max() > hi):
                raise InputError(f"{self.what} for input '{self.name}' holds values in [{a.min()}, {a.max()}], "
                                 f"outside the stored {self.store.dtype} range [{lo}, {hi}]")
            if self.dequantize:
                return dequantize_array(a.astype(self.store.np_dtype), self.quant).astype(np.float32)
            return a.astype(self.dtype)
        if self.dtype.kind != "f" and self.quant is not None:
            return quantize_array(a.astype(np.float32), self.quant, self.dtype)
        return a.astype(self.dtype)


class CalibrationData:
    """Opened, validated sample data for a graph: ``num_samples``, ``batches()`` and ``read()``.

    ``what`` names the data in messages ("calibration data", "inputs", ...);
    ``raw`` says the arrays hold stored integers (module doc: Units).
    ``single`` is True when the data was one sample without a sample axis.
    """

    def __init__(self, path, graph: Graph, what: str = "calibration data", raw: bool = False,
                 keys: Optional[Dict[str, str]] = None):
        self.path = Path(path)
        self.keys = dict(keys or {})  # graph input name -> .npz key, when they differ
        unknown = sorted(set(self.keys) - {v.name for v in graph.inputs})
        if unknown:
            raise InputError(f"--input-key names '{unknown[0]}', which is no input of graph @{graph.name} "
                             f"(inputs: {', '.join(v.name for v in graph.inputs)})")
        self.graph = graph
        self.what = what
        if not graph.inputs:
            raise InputError(f"graph @{graph.name} has no inputs to {'calibrate' if 'calib' in what else 'feed'}")
        self.units = [_Units(graph, v, raw, what) for v in graph.inputs]
        self.extra_keys: List[str] = []  # .npz keys that name no graph input (labels, ...)
        self.streams = [_InputStream(v.name, segs) for v, segs in zip(graph.inputs, self._segments())]
        counts = {s.name: s.n for s in self.streams}
        if len(set(counts.values())) != 1:
            raise InputError(f"{what} '{path}' holds different numbers of samples per input: "
                             + ", ".join(f"{k}: {n}" for k, n in counts.items()))
        self.num_samples = self.streams[0].n
        if self.num_samples == 0:
            raise InputError(f"{what} '{path}' holds no samples")
        self.single = all(len(s.segments) == 1 and s.segments[0].single for s in self.streams)

    def _segments(self) -> List[List[_Segment]]:
        p, g, what = self.path, self.graph, self.what
        inputs = [(v.name, tuple(v.shape), u.read_dtype) for v, u in zip(g.inputs, self.units)]
        if p.is_dir():
            files = _open_folder(p, g)
            return [[_npy_segment(f, shape, name, dt, what) for f in files[name]] for name, shape, dt in inputs]
        if not p.is_file():
            raise InputError(f"{what} '{p}' does not exist")
        if p.suffix == ".npz":
            try:
                with zipfile.ZipFile(p) as z:
                    keys = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            except (zipfile.BadZipFile, OSError) as e:
                raise InputError(f"{what} '{p}' is not a readable .npz archive: {e}") from None
            unknown = [k for k in self.keys.values() if k not in keys]
            if unknown:
                raise InputError(f"{what} '{p}' has no array '{unknown[0]}' (it holds: {', '.join(keys) or 'nothing'})")
            inputs = [(self.keys.get(name, name), shape, dt) for name, shape, dt in inputs]
            missing = [name for name, _, _ in inputs if name not in keys]
            if missing:
                raise InputError(f"{what} '{p}' has no array for graph input "
                                 f"{', '.join(repr(m) for m in missing)} (it holds: "
                                 f"{', '.join(keys) or 'nothing'}); key each array by graph input name "
                                 f"({', '.join(n for n, _, _ in inputs)}) or name its key (--input-key INPUT=KEY)")
            self.extra_keys = [k for k in keys if k not in {n for n, _, _ in inputs}]
            return [[_npz_segment(p, key, shape, dt, what, v.name)]
                    for (key, shape, dt), v in zip(inputs, g.inputs)]
        if p.suffix == ".npy":
            if len(inputs) != 1:
                raise InputError(f"{what} '{p}' is one .npy array, but graph @{g.name} has "
                                 f"{len(inputs)} inputs ({', '.join(n for n, _, _ in inputs)}): use an "
                                 f".npz keyed by input name or a folder with a subfolder per input")
            name, shape, dt = inputs[0]
            return [[_npy_segment(p, shape, name, dt, what)]]
        raise InputError(f"{what} '{p}' must be an .npz file, an .npy file or a folder of .npy files")

    def batches(self, batch_size: int = 32) -> Iterator[Dict[str, np.ndarray]]:
        """``{input name: [b, *input_shape]}`` in the graph's input dtypes (module doc: Units)."""
        if batch_size < 1:
            raise InputError(f"{self.what} batch size must be at least 1, got {batch_size}")
        its = [s.batches(batch_size) for s in self.streams]
        for arrays in zip(*its):
            yield {s.name: u(a) for s, u, a in zip(self.streams, self.units, arrays)}

    def read(self, limit: Optional[int] = None) -> Dict[str, np.ndarray]:
        """The first ``limit`` samples (all when None) as ``{input name: [N, *input_shape]}``."""
        want = self.num_samples if limit is None else min(limit, self.num_samples)
        parts: List[Dict[str, np.ndarray]] = []
        have = 0
        if want:
            for batch in self.batches(min(want, 256)):
                parts.append(batch)
                have += next(iter(batch.values())).shape[0]
                if have >= want:
                    break
        return {v.name: np.concatenate([b[v.name] for b in parts])[:want] if parts else
                np.zeros((0, *v.shape), v.type.np_dtype) for v in self.graph.inputs}


def read_samples(path, graph: Graph, *, what: str = "inputs", raw: bool = False,
                 limit: Optional[int] = None, keys: Optional[Dict[str, str]] = None
                 ) -> Tuple[Dict[str, np.ndarray], "CalibrationData"]:
    """Every sample of ``path`` for ``graph`` (``[N, *input_shape]`` per input) and the opened data."""
    data = CalibrationData(path, graph, what=what, raw=raw, keys=keys)
    return data.read(limit), data


def iter_calibration_batches(path, graph: Graph, batch_size: int = 32) -> Iterator[Dict[str, np.ndarray]]:
    """Yield ``{input name: [b, *input_shape]}`` batches of calibration samples (see module doc)."""
    return CalibrationData(path, graph).batches(batch_size)


def describe_formats() -> str:
    """One line for help texts."""
    return ("an .npz keyed by graph input name, an .npy (single-input graphs), or a folder of .npy "
            "files (one subfolder per input for multi-input graphs)")


__all__: Sequence[str] = ["CalibrationData", "read_samples", "iter_calibration_batches", "describe_formats"]
