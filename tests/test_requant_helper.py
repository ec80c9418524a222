"""qcc_requant, the C of every Qm.n requantization, equals the simulator's rshift_round + clamp.

Its left-shift path (shift <= 0) saturates in 32 bits (acc < ceil(lo / 2^s) or acc > floor(hi / 2^s)
instead of an int64 product): checked here on 20,000 cases per shift in [-31, 31], int8/int16/int32
bounds and extreme accumulators, compiled with UBSan (no signed overflow, no bad shift).
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from qcc.backends.cmsis.generate import _environment
from qcc.sim.qmn import rshift_round

BOUNDS = [(-128, 127), (0, 127), (-32768, 32767), (0, 32767), (-120, 6), (3, 100),
          (-2**31, 2**31 - 1), (-1, 1), (-5, -5)]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
def test_qcc_requant_equals_the_simulator(tmp_path):
    rng = np.random.default_rng(0)
    cases = []
    for shift in range(-31, 32):
        for lo, hi in BOUNDS:
            acc = np.concatenate([np.arange(-300, 300), [-2**31, 2**31 - 1, -2**31 + 1, 2**31 - 2],
                                  rng.integers(-2**31, 2**31, 100),
                                  rng.integers(-2**15, 2**15, 100) >> rng.integers(0, 15, 100)])
            want = np.clip(rshift_round(acc, shift), lo, hi)
            cases += [(int(a), shift, lo, hi, int(w)) for a, w in zip(acc, want)]
    helpers = _environment().get_template("helpers.j2").module.helpers([])
    table = ",\n".join(f"{{{a}, {s}, {lo}, {hi}, {w}}}".replace("-2147483648", "INT32_MIN")
                       for a, s, lo, hi, w in cases)
    (tmp_path / "t.c").write_text(
        "#include <stdint.h>\n#include <stdio.h>\n#include <string.h>\n" + str(helpers) +
        "\nstatic const int64_t cases[][5] = {\n" + table + "\n};\n"
        "int main(void)\n{\n    long bad = 0;\n"
        "    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {\n"
        "        const int64_t *c = cases[i];\n"
        "        if (qcc_requant((int32_t)c[0], (int)c[1], (int32_t)c[2], (int32_t)c[3]) != c[4] && bad++ < 5)\n"
        "            printf(\"acc %lld shift %lld [%lld, %lld]\\n\", (long long)c[0], (long long)c[1],"
        " (long long)c[2], (long long)c[3]);\n"
        "    }\n    printf(\"%ld\\n\", bad);\n    return bad != 0;\n}\n")
    exe = tmp_path / "t"
    subprocess.run(["gcc", "-O2", "-std=c99", "-Wall", "-Wno-unused-function", "-fsanitize=undefined",
                    "-fno-sanitize-recover=undefined", str(tmp_path / "t.c"), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("0"), out.stdout + out.stderr
    assert len(cases) > 50_000
