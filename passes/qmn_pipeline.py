"""The named pipeline ``qmn``: float cleanup, then the Qm.n fixed-point flow.

    qcc-opt model.onnx -p qmn --calib data.npz -o q.qir
    qcc-opt model.onnx -p "qmn{bits=16,method=mse,weight_bits=8,per_channel=true,search=true}" --calib data.npz
    qcc-opt model.onnx -p "qmn{mixed=true,target_sqnr=30,max_flash=40000}" --calib data.npz
    qcc-opt model.onnx -p "qmn{objective=range,correct_bias=false}" --calib data.npz    (the seed rule alone)

expands to::

    canonicalize, fold-batchnorm, fuse-activation, legalize-pool, to-nhwc, legalize-qmn, const-fold,
    canonicalize, dce (those registered), check-legal{scheme=qmn, float_output},
    calibrate{method, p, bits, data}, calibrate-recurrent{data}, [float-layers{layers=float_layers}],
    insert-qdq{bits, weight_bits, per_channel},
    propagate-scales, [mixed-bits{target_sqnr, max_flash, max_ram, unit=mixed_unit, ...} with mixed=true],
    assign-qmn{search, per_channel, data, samples, objective},
    correct-bias{search, per_channel, data, samples} (with correct_bias=true),
    lower-quantized{float_output}, check-quantized, dce

Calibration data: the ``data`` option, else the driver's context key ``calib``.
"""
from __future__ import annotations

from typing import Any, Dict, List

from qcc.transforms.passmanager import make_pass, register_pipeline, registered_passes
from qcc.transforms.pipeline_text import check_option

FLOAT_CLEANUP = ("canonicalize", "fold-batchnorm", "fuse-activation", "legalize-pool", "to-nhwc", "legalize-qmn",
                 "const-fold", "canonicalize", "dce")
DEFAULTS: Dict[str, Any] = {"bits": 8, "method": "percentile", "p": 99.99, "weight_bits": 0,
                            "per_channel": True, "search": True, "float_output": False, "data": "",
                            "samples": 64, "objective": "output", "correct_bias": False, "mixed": False,
                            "target_sqnr": 0.0, "max_flash": 0, "max_ram": 0, "mixed_unit": "tensor",
                            "float_layers": ""}


def _build(options: Dict[str, Any]) -> List:
    o = {**DEFAULTS, **options}
    check_option(o["bits"] in (8, 16), "pipeline 'qmn'", "bits", "8 or 16", o["bits"])
    check_option(o["weight_bits"] in (0, 8, 16), "pipeline 'qmn'", "weight_bits", "0 (same as bits), 8 or 16",
                 o["weight_bits"])
    check_option(not o["mixed"] or (o["bits"] == 8 and o["weight_bits"] == 0), "pipeline 'qmn'", "mixed",
                 "used with the default bits=8 and weight_bits=0 (the search starts all-8-bit)", o["mixed"])
    known = registered_passes()
    passes: List = [name for name in FLOAT_CLEANUP if name in known]
    # Every op must have a Qm.n kernel before calibration spends any time.
    passes.append(make_pass("check-legal", {"scheme": "qmn", "float_output": str(o["float_output"])}))
    calibrate = {"method": o["method"], "bits": str(o["bits"])}
    if o["method"] == "percentile":
        calibrate["p"] = str(o["p"])
    if o["data"]:
        calibrate["data"] = o["data"]
    passes.append(make_pass("calibrate", calibrate))
    passes.append(make_pass("calibrate-recurrent", {"data": o["data"]} if o["data"] else {}))
    if o["float_layers"]:  # kept float after calibration, so the integer tensors around them keep ranges
        passes.append(make_pass("float-layers", {"layers": o["float_layers"]}))
    passes.append(make_pass("insert-qdq", {"bits": str(o["bits"]), "weight_bits": str(o["weight_bits"]),
                                           "per_channel": str(o["per_channel"])}))
    passes.append("propagate-scales")
    if o["mixed"]:
        mixed = {"target_sqnr": str(o["target_sqnr"]), "max_flash": str(o["max_flash"]),
                 "max_ram": str(o["max_ram"]), "per_channel": str(o["per_channel"]), "search": str(o["search"]),
                 "samples": str(o["samples"]), "unit": o["mixed_unit"], "objective": o["objective"]}
        if o["data"]:
            mixed["data"] = o["data"]
        passes.append(make_pass("mixed-bits", mixed))
    assign = {"search": str(o["search"]), "per_channel": str(o["per_channel"]), "samples": str(o["samples"])}
    if o["data"]:
        assign["data"] = o["data"]
    passes.append(make_pass("assign-qmn", {**assign, "objective": o["objective"]}))
    if o["correct_bias"]:
        passes.append(make_pass("correct-bias", assign))
    passes.append(make_pass("lower-quantized", {"float_output": str(o["float_output"])}))
    passes += ["check-quantized", "dce"]
    return passes


register_pipeline(
    "qmn", _build, "Quantize to Qm.n fixed point (q7/q15) and lower to integer qnn ops.",
    {"bits": int, "method": str, "p": float, "weight_bits": int, "per_channel": bool, "search": bool,
     "float_output": bool, "data": str, "samples": int, "objective": str, "correct_bias": bool, "mixed": bool,
     "target_sqnr": float, "max_flash": int, "max_ram": int, "mixed_unit": str,
     "float_layers": str})
