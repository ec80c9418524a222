"""Calibration data: stream samples for a graph's inputs from .npz, .npy or folders.

A *sample* is one value per graph input, shaped exactly like that input (a
graph whose input is ``1x49x10x1`` takes samples of shape ``1x49x10x1``).
Batches stack samples along a new leading axis: ``{name: [b, *input_shape]}``.

Accepted layouts (``path`` is one of):

* ``data.npz``: one array per graph input, keyed by the input's name (other
  keys, e.g. ``labels``, are ignored);
* ``data.npy``: the samples of the only input of a single-input graph;
* a folder of ``.npy`` files (name order) for a single-input graph, or a
  folder with one subfolder per input, named after the input (characters
  other than ``[A-Za-z0-9_.-]`` may be written ``_``); the subfolders must
  hold the same file names, which pair samples across inputs.

Each array holds samples in one of these shapes, for an input of shape ``I``:

* ``[N, *I]``: N samples (one more leading axis than the input);
* ``[N, *I[1:]]`` when ``I[0] == 1``: N samples without their batch axis;
* ``I`` itself, or ``I[1:]`` when ``I[0] == 1``: one sample.

Streaming: ``.npy`` files are memory-mapped and ``.npz`` members are read
sequentially from the zip stream (stored or deflated alike), so memory stays
at about one batch whatever the dataset size. A Fortran-ordered ``.npz``
member cannot be streamed by rows and is read whole.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np

from qcc.errors import InputError
from qcc.ir.graph import Graph

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _read_header(fp, label: str) -> Tuple[Tuple[int, ...], bool, np.dtype]:
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
        raise InputError(f"calibration data '{label}' is not a readable .npy array: {e}") from None


def _sample_layout(shape: Tuple[int, ...], want: Tuple[int, ...], label: str, input_name: str) -> int:
    """How many samples an array of ``shape`` holds for an input of shape ``want``."""
    if len(shape) == len(want) + 1 and shape[1:] == want:
        return shape[0]
    if want and want[0] == 1 and len(shape) == len(want) and shape[1:] == want[1:]:
        return shape[0]
    if shape == want or (want and want[0] == 1 and shape == want[1:]):
        return 1
    hint = f"[N, {', '.join(map(str, want))}]"
    if want and want[0] == 1:
        hint += f" or [N, {', '.join(map(str, want[1:]))}]"
    raise InputError(f"calibration data '{label}' has shape {list(shape)}, but graph input "
                     f"'{input_name}' has shape {list(want)}: expected {hint}")


def _check_dtype(dtype: np.dtype, target: np.dtype, label: str, input_name: str):
    ok = dtype.kind in "fiu" if target.kind == "f" else dtype.kind in "iu"
    if not ok:
        want = "a float or integer" if target.kind == "f" else "an integer"
        raise InputError(f"calibration data '{label}' has dtype {dtype}, graph input '{input_name}' "
                         f"({target}) needs {want} array")


class _Segment:
    """``n`` consecutive samples stored in one array, read front to back."""

    def __init__(self, label: str, n: int, opener: Callable[[], Tuple[Callable[[int], np.ndarray], Callable]]):
        self.label, self.n, self._opener, self._read, self._close = label, n, opener, None, None

    def read(self, k: int) -> np.ndarray:
        if self._read is None:  # files open only when their samples are due
            self._read, self._close = self._opener()
        return self._read(k)

    def close(self):
        if self._close is not None:
            self._close()
        self._read = self._close = None


def _npy_segment(path: Path, shape_in: Tuple[int, ...], input_name: str, dtype: np.dtype) -> _Segment:
    label = str(path)
    try:
        with open(path, "rb") as f:
            shape, _, file_dtype = _read_header(f, label)
    except OSError as e:
        raise InputError(f"cannot read calibration data '{label}': {e.strerror}") from None
    _check_dtype(file_dtype, dtype, label, input_name)
    n = _sample_layout(tuple(shape), shape_in, label, input_name)

    def opener():
        try:  # a view: nothing is read yet
            view = np.load(path, mmap_mode="r").reshape((n, *shape_in))
        except (OSError, ValueError) as e:
            raise InputError(f"calibration data '{label}' is truncated or unreadable: {e}") from None
        pos = [0]

        def read(k):
            out = np.array(view[pos[0]:pos[0] + k], dtype=dtype)
            pos[0] += k
            return out
        return read, lambda: None
    return _Segment(label, n, opener)


def _npz_segment(path: Path, key: str, shape_in: Tuple[int, ...], dtype: np.dtype) -> _Segment:
    label = f"{path}[{key}]"
    with zipfile.ZipFile(path) as z:
        with z.open(key + ".npy") as f:
            shape, fortran, file_dtype = _read_header(f, label)
    _check_dtype(file_dtype, dtype, label, key)
    n = _sample_layout(tuple(shape), shape_in, label, key)
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
                raise InputError(f"calibration data '{label}' is truncated")
            return np.frombuffer(buf, file_dtype).reshape((k, *shape_in)).astype(dtype)
        return read, z.close
    return _Segment(label, n, opener)


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


class CalibrationData:
    """Opened, validated calibration data for a graph: ``num_samples`` and ``batches()``."""

    def __init__(self, path, graph: Graph):
        self.path = Path(path)
        self.graph = graph
        if not graph.inputs:
            raise InputError(f"graph @{graph.name} has no inputs to calibrate")
        self.streams = [_InputStream(v.name, segs) for v, segs in zip(graph.inputs, self._segments())]
        counts = {s.name: s.n for s in self.streams}
        if len(set(counts.values())) != 1:
            raise InputError(f"calibration data '{path}' holds different numbers of samples per input: "
                             + ", ".join(f"{k}: {n}" for k, n in counts.items()))
        self.num_samples = self.streams[0].n
        if self.num_samples == 0:
            raise InputError(f"calibration data '{path}' holds no samples")

    def _segments(self) -> List[List[_Segment]]:
        p, g = self.path, self.graph
        inputs = [(v.name, tuple(v.shape), v.type.np_dtype) for v in g.inputs]
        if p.is_dir():
            files = _open_folder(p, g)
            return [[_npy_segment(f, shape, name, dt) for f in files[name]] for name, shape, dt in inputs]
        if not p.is_file():
            raise InputError(f"calibration data '{p}' does not exist")
        if p.suffix == ".npz":
            try:
                with zipfile.ZipFile(p) as z:
                    keys = {n[:-4] for n in z.namelist() if n.endswith(".npy")}
            except (zipfile.BadZipFile, OSError) as e:
                raise InputError(f"calibration data '{p}' is not a readable .npz archive: {e}") from None
            missing = [name for name, _, _ in inputs if name not in keys]
            if missing:
                raise InputError(f"calibration data '{p}' has no array for graph input "
                                 f"{', '.join(repr(m) for m in missing)} (it holds: "
                                 f"{', '.join(sorted(keys)) or 'nothing'}); key each array by input name")
            return [[_npz_segment(p, name, shape, dt)] for name, shape, dt in inputs]
        if p.suffix == ".npy":
            if len(inputs) != 1:
                raise InputError(f"calibration data '{p}' is one .npy array, but graph @{g.name} has "
                                 f"{len(inputs)} inputs ({', '.join(n for n, _, _ in inputs)}): use an "
                                 f".npz keyed by input name or a folder with a subfolder per input")
            name, shape, dt = inputs[0]
            return [[_npy_segment(p, shape, name, dt)]]
        raise InputError(f"calibration data '{p}' must be an .npz file, an .npy file or a folder of .npy files")

    def batches(self, batch_size: int = 32) -> Iterator[Dict[str, np.ndarray]]:
        if batch_size < 1:
            raise InputError(f"calibration batch size must be at least 1, got {batch_size}")
        its = [s.batches(batch_size) for s in self.streams]
        for arrays in zip(*its):
            yield {s.name: a for s, a in zip(self.streams, arrays)}


def iter_calibration_batches(path, graph: Graph, batch_size: int = 32) -> Iterator[Dict[str, np.ndarray]]:
    """Yield ``{input name: [b, *input_shape]}`` batches of calibration samples (see module doc)."""
    return CalibrationData(path, graph).batches(batch_size)


def describe_formats() -> str:
    """One line for help texts."""
    return ("an .npz keyed by graph input name, an .npy (single-input graphs), or a folder of .npy "
            "files (one subfolder per input for multi-input graphs)")


__all__: Sequence[str] = ["CalibrationData", "iter_calibration_batches", "describe_formats"]
