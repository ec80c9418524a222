#!/usr/bin/env bash
# Compile examples/digits for a Cortex-M core, run all 360 test samples on the
# emulated device (QEMU, one firmware run for the whole batch), and print the
# test accuracy measured there next to the integer simulator's. The two must
# agree: the emitted C is bit-exact with the simulator.
#
#   examples/digits/run_on_qemu.sh                 # cortex-m4, q7, into build/digits-qemu
#   TARGET=cortex-m7 BITS=16 OUT=/tmp/d examples/digits/run_on_qemu.sh
#
# First it runs .ci/setup, which installs what is missing (apt-get: the Arm
# toolchain, newlib, QEMU, make; pip: qcc itself). SKIP_SETUP=1 skips that.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${SKIP_SETUP:-}" ]; then
    bash "$HERE/../../.ci/setup"
fi
TARGET="${TARGET:-cortex-m4}"
BITS="${BITS:-8}"
OUT="${OUT:-build/digits-qemu}"

qcc "$HERE/digits.onnx" -o "$OUT/digits.c" --target "$TARGET" --bits "$BITS" \
    --calib "$HERE/calib.npz" --emit-ir "$OUT/digits.qir" --report "$OUT/report.json"
make -s -C "$OUT" >/dev/null

python3 - "$HERE" "$OUT" "$TARGET" <<'PY'
import sys
from pathlib import Path

import numpy as np

from qcc.backends.cmsis import generate, harness
from qcc.ir.parser import parse_file

here, out, target = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
graph = parse_file(out / "digits.qir")          # the lowered graph qcc compiled
test = np.load(here / "test.npz")
labels = test["labels"]
samples = {graph.inputs[0].name: test["input"]}
compiled = generate(graph, "digits", target)   # the same files qcc wrote: gives the output record layout
assert compiled.files["digits.c"] == (out / "digits.c").read_bytes()

count = harness.write_samples(out / "test.bin", graph, samples)
seconds = harness.run_qemu(out, out / "test.bin", out / "device.bin")
device = harness.read_outputs(out / "device.bin", compiled, count)
sim = harness.simulate(graph, compiled, samples)

dev_pred = device.quantized[0].reshape(count, -1).argmax(axis=1)
sim_pred = sim.quantized[0].reshape(count, -1).argmax(axis=1)
same = sum(int(np.array_equal(d, s)) for d, s in zip(device.quantized[0], sim.quantized[0]))
dev_ok, sim_ok = int((dev_pred == labels).sum()), int((sim_pred == labels).sum())
print(f"digits on {target} (QEMU, {count} test samples in one run, {seconds:.2f} s):")
print(f"  device accuracy    {dev_ok}/{count} = {100 * dev_ok / count:.2f} %")
print(f"  simulator accuracy {sim_ok}/{count} = {100 * sim_ok / count:.2f} %")
print(f"  bit-exact outputs  {same}/{count}")
sys.exit(0 if same == count and dev_ok == sim_ok else 1)
PY
