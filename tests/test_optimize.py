"""``--optimize speed|size`` of the cmsis backend's affine int8 kernels: both bit-exact with the simulator.

speed (the default, on cores with SMLAD and no Helium): ungrouped convolutions widen each pair of
output pixels' windows once and run 2 pixel x 2 channel SMLAD dots on packed int16 weights
(s8_conv2d.j2 gemm_col); dense layers run 4 channels per pass on packed weights. size keeps the
int8 tables and the generic loops; depthwise convolutions run pixel pairs of wholly inside windows in
speed mode (one weight load for both). The graph below reaches every branch of the speed paths (Cin a
multiple of 4 or not, padding on either axis, strides, dilation, an odd number of output pixels per
row, odd Cout, a flat 1x1, dense with a weight zero point and with a channel tail, depthwise pixel
pairs) and is run on the
host (gcc, ASan/UBSan, the portable C) in both modes and in QEMU on a Cortex-M4 (SMLAD) in both modes.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import qcc.sim.s8  # noqa: F401  (registers the s8 kernels)
from qcc.backends.cmsis import generate, harness
from qcc.errors import InputError
from qcc.fileio import write_files
from qcc.ir.graph import Graph
from qcc.ir.types import TensorType, UniformQuant

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_backend_s8 import S8Builder, _compare, random_inputs  # noqa: E402

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_qemu = pytest.mark.skipif(harness.tools_missing("arm-none-eabi-gcc", "qemu-system-arm", "make") is not None,
                                reason="arm-none-eabi-gcc, make or qemu-system-arm not installed")


def speed_graph(seed: int) -> Graph:
    b = S8Builder(seed)
    g = b.g
    xi = g.add_input("image", TensorType((1, 7, 9, 6)))
    x = g.add_op("q.quantize", [xi], result_types=[TensorType((1, 7, 9, 6), "i8", UniformQuant(0.0625, -11))]).result
    c6 = b.conv(x, 7, 3, "cin6_pad", pads=(1, 1, 1, 1), relu=True)                # Cin % 4 != 0, odd Cout, OW 9
    c8 = b.conv(c6, 8, 1, "to8")                                                    # flat 1x1, 63 pixels
    cx = b.conv(c8, 12, (2, 3), "pad_x", pads=(0, 2, 0, 1), strides=(1, 2))         # padding on x only
    cy = b.conv(c8, 5, (3, 1), "pad_y_dil", pads=(2, 0, 2, 0), dil=(2, 1), strides=(2, 1))  # y padding, dilation
    cs = b.conv(cx, 9, 3, "s2", strides=(2, 2), pads=(1, 0, 0, 1))
    dw = b.conv(c8, 8, 3, "dw_pairs", group=8, pads=(1, 1, 1, 1))                  # depthwise pixel pairs
    flat = g.add_op("nn.reshape", [cy], {"shape": [1, -1]}, name="flat").result
    k = flat.shape[1]
    assert k % 4 == 0
    wd = g.add_const(b.rng.integers(-127, 128, (10, k)).astype(np.int8))
    bd = g.add_const(b.rng.integers(-2000, 2000, 10).astype(np.int32))
    dm, ds = b.multipliers(10, 40.0 / (np.sqrt(k) * 60 * 73))
    zin = cy.type.quant.zero_point
    fc = b.typed(g.add_op("s8.dense", [flat, wd, bd], dict(input_zp=zin, output_zp=-10, multiplier=dm, shift=ds,
                                                           weight_zp=3), name="fc_wzp"), -10)
    wd2 = g.add_const(b.rng.integers(-127, 128, (6, 10)).astype(np.int8))           # K = 10: int8 fallback
    dm2, ds2 = b.multipliers(6, 40.0 / (np.sqrt(10) * 60 * 73))
    fc2 = b.typed(g.add_op("s8.dense", [fc, wd2], dict(input_zp=-10, output_zp=4, multiplier=dm2, shift=ds2),
                           name="fc_k10"), 4)
    outs = [g.add_op("q.dequantize", [v], result_types=[TensorType(v.shape)]).result for v in (cs, fc, fc2, dw)]
    g.set_outputs(outs, ["conv", "fc", "fc2", "dw"])
    g.verify()
    return g


def _c_source(gen) -> str:
    return gen.files[f"{gen.name}.c"].decode()


def _run(folder: Path, g: Graph, optimize: str, where: str, seed: int):
    gen = generate(g, "net", "cortex-m4", optimize=optimize)
    write_files({folder / k: v for k, v in gen.files.items()})
    samples = random_inputs(g, 6, seed)
    count = harness.write_samples(folder / "in.bin", g, samples)
    if where == "host":
        harness.run_host(harness.build_host(folder, gen.name), folder / "in.bin", folder / "out.bin")
    else:
        harness.run_qemu(folder, folder / "in.bin", folder / "out.bin")
    got = _compare(gen, g, folder / "out.bin", samples, count)
    for q in got.quantized:  # real arithmetic, not a saturated constant
        assert len(np.unique(q)) > 4
    return gen


def test_speed_and_size_emit_their_kernels():
    g = speed_graph(0)
    speed, size = (generate(g, "net", "cortex-m4", optimize=o) for o in ("speed", "size"))
    c = _c_source(speed)
    assert c.count("_win(const int8_t *xn") == 5  # every conv widens its windows
    assert "qcc_dot2x2w_s8(col" in c and "qcc_dot1x2w_s8(col" in c  # pixel pairs, odd-width tails
    assert c.count("qcc_dot1x4p_s8(xr") == 2  # fc_wzp: full blocks and the 2-channel tail; fc_k10 is not packed
    assert "pixel pairs (dw_pair" in c
    assert "qcc_dot2x2w_s8(col" not in _c_source(size) and "qcc_dot1x4p_s8(xr" not in _c_source(size)
    assert "pixel pairs (dw_pair" not in _c_source(size)
    assert speed.weight_bytes > size.weight_bytes
    # deterministic: the same inputs give byte-identical C
    assert generate(g, "net", "cortex-m4").files == speed.files
    # no SMLAD (M0+) or Helium dots (M55): the speed option keeps the int8 tables there
    for target in ("cortex-m0plus", "cortex-m55"):
        assert "qcc_dot2x2w_s8(col" not in _c_source(generate(g, "net", target))


def test_unknown_optimize_is_refused():
    with pytest.raises(InputError, match="optimize"):
        generate(speed_graph(0), "net", "cortex-m4", optimize="fast")


@needs_gcc
@pytest.mark.parametrize("optimize", ["speed", "size"])
def test_optimize_modes_on_host_match_simulator(tmp_path, optimize):
    _run(tmp_path, speed_graph(1), optimize, "host", 1)


@needs_qemu
@pytest.mark.parametrize("optimize", ["speed", "size"])
def test_optimize_modes_on_qemu_m4_match_simulator(tmp_path, optimize):
    _run(tmp_path, speed_graph(2), optimize, "qemu", 2)
