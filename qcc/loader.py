"""Load a model file of any kind qcc reads, chosen by its suffix.

    .onnx -> qcc.frontend.load_onnx (float or QDQ ONNX)
    .qir  -> qcc.parser.parse_file (the text IR)
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from .errors import InputError
from .graph import Graph


def load_model(path: Union[str, Path], input_shapes: Optional[dict] = None) -> Graph:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from .frontend import load_onnx
        return load_onnx(path, input_shapes)
    if suffix == ".qir":
        if input_shapes:
            raise InputError(f"{path}: --input-shape applies to ONNX models; a .qir file fixes its own shapes")
        from .parser import parse_file
        return parse_file(path)
    raise InputError(f"{path}: unknown model format '{suffix or '(no suffix)'}'; qcc reads .onnx and .qir files")
