"""Quantization-aware fine-tuning with qcc's own Qm.n formats, measured on QEMU.

    pip install -e '.[train]'            # torch, scikit-learn
    python3 examples/qat/qat.py          # into build/qat; prints the accuracy table

1. Train a small float CNN on scikit-learn's 8x8 digits (the splits of
   examples/digits/train.py: 1237 train, 200 calibration, 360 test) and
   export it to ONNX.
2. Post-training quantization: ``qcc float.onnx --scheme qmn --calib calib.npz
   -o ptq/net.c --emit-onnx-qdq ptq.onnx`` (q7); qcc writes ``ptq.onnx.json``,
   the format of every tensor.
3. Fine-tune a few epochs with fake quantization fixed to those formats
   (``fake_quant.attach_formats``), export the result with torch.onnx: a QDQ
   model with power-of-two scales.
4. ``qcc qat.onnx --scheme qmn -o qat/net.c``: no calibration, the formats
   come with the model.
5. Run the 360 test digits through both firmwares on QEMU (Cortex-M4,
   mps2-an386) and through qcc's integer simulator; the two agree bit for
   bit, and the script reports both accuracies.

Everything is seeded and single-threaded, so reruns give the same numbers.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fake_quant import FakeQuant, attach_formats, freeze_biases  # noqa: E402

SEED = 0
INPUT_NAME, OUTPUT_NAME = "input", "logits"
EPOCHS, QAT_EPOCHS, BATCH = 40, 5, 32


def _digits_splits():
    """examples/digits/train.py's stratified splits: (train, calib, test) as (x [N,8,8,1], y)."""
    spec = importlib.util.spec_from_file_location("digits_train", HERE.parent / "digits" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_splits()


class SmallNet(nn.Module):
    """NHWC input -> conv 3x3 8ch - relu - conv 3x3 16ch - relu - maxpool 2 - avgpool 2 - dense 10."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.AvgPool2d(2), nn.Flatten(),
            nn.Linear(16 * 2 * 2, 10))

    def forward(self, x):
        return self.features(x.permute(0, 3, 1, 2))


class QuantizedInput(nn.Module):
    """The model behind a fake-quant of its input (qcc's input format)."""

    def __init__(self, model: nn.Module, fmt: dict):
        super().__init__()
        self.fq, self.model = FakeQuant(fmt), model

    def forward(self, x):
        return self.model(self.fq(x))


def train(model: nn.Module, x, y, epochs: int, lr: float) -> None:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
        sched.step()
    model.eval()


def accuracy(model: nn.Module, x, y) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def export(model: nn.Module, path: Path) -> None:
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 8, 8, 1),), buf, dynamo=False, input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], opset_version=13, do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())


def compile_qcc(args) -> None:
    from qcc.tools.compile import main as qcc_main
    print("  $ qcc " + " ".join(args))
    if qcc_main(args) != 0:
        raise SystemExit(f"qcc failed: qcc {' '.join(args)}")


def run_firmware(folder: Path, x, y, qemu: bool) -> dict:
    """Test accuracy of a compiled model on QEMU (when ``qemu``) and in the simulator; bit-exact count."""
    from qcc.backends.cmsis import generate, harness
    from qcc.ir.parser import parse_file
    graph = parse_file(folder / "net.qir")
    samples = {graph.inputs[0].name: x[:, None]}
    compiled = generate(graph, "net", "cortex-m4")
    assert compiled.files["net.c"] == (folder / "net.c").read_bytes()
    sim = harness.simulate(graph, compiled, samples).quantized[0].reshape(len(y), -1)
    out = {"simulator_accuracy": float((sim.argmax(1) == y).mean())}
    if qemu:
        count = harness.write_samples(folder / "test.bin", graph, samples)
        harness.run_qemu(folder, folder / "test.bin", folder / "device.bin")
        dev = harness.read_outputs(folder / "device.bin", compiled, count).quantized[0].reshape(count, -1)
        out["qemu_accuracy"] = float((dev.argmax(1) == y).mean())
        out["bit_exact"] = int(sum(np.array_equal(d, s) for d, s in zip(dev, sim)))
    out["arena_bytes"] = compiled.plan.arena_size
    out["weight_bytes"] = compiled.weight_bytes
    return out


def main(out: Path = Path("build/qat"), epochs: int = EPOCHS, qat_epochs: int = QAT_EPOCHS,
         qemu: bool = True) -> dict:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    (x_train, y_train), (x_calib, _), (x_test, y_test) = _digits_splits()

    print(f"1. float training ({epochs} epochs)")
    model = SmallNet()
    train(model, x_train, y_train, epochs, lr=1e-2)
    export(model, out / "float.onnx")
    np.savez(out / "calib.npz", **{INPUT_NAME: x_calib[:, None]})

    print("2. post-training quantization (q7)")
    compile_qcc([str(out / "float.onnx"), "--scheme", "qmn", "--calib", str(out / "calib.npz"),
                 "-o", str(out / "ptq" / "net.c"), "--target", "cortex-m4",
                 "--emit-ir", str(out / "ptq" / "net.qir"), "--emit-onnx-qdq", str(out / "ptq.onnx")])
    formats = json.loads((out / "ptq.onnx.json").read_text())

    print(f"3. fine-tuning with qcc's formats fixed ({qat_epochs} epochs)")
    input_fmt = next(t for t in formats["tensors"].values() if t.get("float") == INPUT_NAME)
    qat = QuantizedInput(attach_formats(copy.deepcopy(model), formats), input_fmt)
    fq_before = accuracy(qat, x_test, y_test)
    train(qat, x_train, y_train, qat_epochs, lr=3e-4)
    export(freeze_biases(qat), out / "qat.onnx")

    print("4. compile the fine-tuned QDQ model (no calibration)")
    compile_qcc([str(out / "qat.onnx"), "--scheme", "qmn", "-o", str(out / "qat" / "net.c"),
                 "--target", "cortex-m4", "--emit-ir", str(out / "qat" / "net.qir")])

    print("5. test accuracy (360 digits)" + (" on QEMU, Cortex-M4" if qemu else ""))
    metrics = {"float_accuracy": accuracy(model, x_test, y_test),
               "fake_quant_before_finetune": fq_before, "fake_quant_after_finetune": accuracy(qat, x_test, y_test),
               "ptq": run_firmware(out / "ptq", x_test, y_test, qemu),
               "qat": run_firmware(out / "qat", x_test, y_test, qemu),
               "epochs": epochs, "qat_epochs": qat_epochs, "test_samples": int(len(y_test)),
               "torch_version": torch.__version__.split("+")[0]}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    key = "qemu_accuracy" if qemu else "simulator_accuracy"
    print(f"   float (torch)          {metrics['float_accuracy']:.4f}")
    print(f"   q7 post-training       {metrics['ptq'][key]:.4f}")
    print(f"   q7 fine-tuned (QAT)    {metrics['qat'][key]:.4f}")
    return metrics


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("build/qat"))
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--qat-epochs", type=int, default=QAT_EPOCHS)
    p.add_argument("--no-qemu", action="store_true", help="simulator only")
    a = p.parse_args()
    main(a.out, a.epochs, a.qat_epochs, not a.no_qemu)
