"""Layers whose kernels are the same code share one function (backends/cmsis/share.py).

* share_kernels on C text: two single-function kernels that differ only in their table names
  become one body with the tables as arguments and two thin per-layer functions; a differing
  literal, or a kernel with helper functions, is left alone.
* Repeated depthwise blocks, Qm.n 8/16, whole-tensor and row-streamed: the C shares the
  depthwise code and still equals the simulator bit for bit on the host (sanitizers) and, 8-bit,
  in QEMU (Cortex-M4). MLPerf's int8 DS-CNN shares its four depthwise layers (its C == TFLite
  Micro runs are in test_backend_s8.py).
"""
from __future__ import annotations

import re
import shutil

import pytest

from qcc.backends.cmsis import generate
from qcc.backends.cmsis.share import share_kernels

from test_backend_cmsis import Builder, compare_on_qemu, compile_and_compare, random_inputs

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                                reason="qemu-system-arm / arm-none-eabi-gcc not installed")


def _kernel(fn: str, w: str, literal: int = 3) -> str:
    return (f"/* {fn} */\nstatic QCC_NOINLINE void {fn}(const int8_t *restrict x, int8_t *restrict y)\n{{\n"
            f"    for (int i = 0; i < 8; i++)\n        y[i] = (int8_t)(x[i] * {w}[i] >> {literal});\n}}")


def test_text_level_sharing():
    tables = {"net_l0_w": "int8_t", "net_l1_w": "int8_t", "net_l2_w": "int8_t"}
    texts = [_kernel("l0_a", "net_l0_w"), _kernel("l1_b", "net_l1_w"), _kernel("l2_c", "net_l2_w", literal=4)]
    out, shared = share_kernels(texts, tables)
    assert shared == 1 and len(out) == 3
    assert "static QCC_NOINLINE void l0_a_k(const int8_t *restrict x, int8_t *restrict y, const int8_t *restrict t0)" in out[0]
    assert "t0[i]" in out[0] and "net_l0_w[i]" not in out[0].split("l0_a_k(x, y")[0]
    assert "l0_a_k(x, y, net_l0_w);" in out[0] and "l0_a_k(x, y, net_l1_w);" in out[1]
    assert out[2] == texts[2]                       # another literal: its own code
    # equal kernels without tables: one body, no extra parameters
    same, n = share_kernels([_kernel("l5_f", "7"), _kernel("l6_g", "7")], tables)
    assert n == 1 and "void l5_f_k(const int8_t *restrict x, int8_t *restrict y)\n" in same[0]
    assert "l5_f_k(x, y);" in same[1]
    helper = "static inline void l3_d_pair(void)\n{\n}\n" + _kernel("l3_d", "net_l0_w")
    assert share_kernels([helper, _kernel("l4_e", "net_l1_w")], tables)[1] == 0


def _qmn_blocks(bits: int):
    b = Builder(f"share{bits}", bits, 11)
    x = b.input("x", (1, 12, 6, 8), 5)
    v = x
    for k in range(3):                                # three identical depthwise + pointwise blocks
        v = b.conv(v, 8, 3, f"dw{k}", group=8, pads=(1, 1, 1, 1), per_channel=True, relu=True)
        v = b.conv(v, 8, 1, f"pw{k}", per_channel=True, relu=True)
    v = b.conv(v, 8, 3, "dw_last", group=8, pads=(0, 0, 0, 0), per_channel=True)   # other padding
    return b.graph([v], ["y"])


@needs_gcc
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("max_recompute", [None, 0])
def test_qmn_repeated_blocks_share_and_stay_exact(tmp_path, bits, max_recompute):
    g = _qmn_blocks(bits)
    options = {} if max_recompute is None else {"max_recompute": max_recompute}
    gen, got = compile_and_compare(g, tmp_path, random_inputs(g, 4, bits), **options)
    c = gen.files["net.c"].decode()
    # dw0 and dw2 run in place (no restrict), dw1 does not: two functions for the three
    assert re.search(r"/\* The code of [23] layers \(\w*dw\d", c), "padded depthwise layers share code"
    assert "dw_last" in c and "dw_last_k(" not in c


def test_mlperf_dscnn_int8_shares_its_depthwise_layers():
    """Its four depthwise layers are one function; its C equals TensorFlow Lite Micro's outputs on the
    host and in QEMU (test_backend_s8.py), which covers the shared code's arithmetic."""
    from test_streaming import _lowered
    c = generate(_lowered("kws_dscnn"), "net", "cortex-m4").files["net.c"].decode()
    assert "/* The code of 4 layers" in c


@needs_qemu
def test_shared_kernels_on_qemu(tmp_path):
    g = _qmn_blocks(8)
    compare_on_qemu(g, tmp_path, random_inputs(g, 3, 8))


def test_sharing_is_deterministic():
    assert generate(_qmn_blocks(8), "net", "cortex-m4").files == generate(_qmn_blocks(8), "net", "cortex-m4").files
