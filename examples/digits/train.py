"""Train the qcc example CNN on scikit-learn's 8x8 digits and export it to ONNX.

Run from anywhere:  python3 examples/digits/train.py
Needs the optional ``train`` extra (``pip install -e .[train]``: torch, scikit-learn)
plus onnx and onnxruntime. Every output is regenerated deterministically (fixed
seeds, single-threaded deterministic torch kernels, zip entries with a fixed
timestamp), so rerunning it on the same torch/numpy/zlib versions reproduces
the committed files.

Data: ``sklearn.datasets.load_digits`` (1797 images, 8x8, pixels 0..16). The
network input is x = pixel / 16 in [0, 1], laid out NHWC [1, 8, 8, 1] like the
MLPerf Tiny models; a Transpose to NCHW follows the graph input so the
compiler's to-nhwc pass has a layout change to remove.

Splits (stratified, seed 0), disjoint:
    test  360 samples  -> test.npz   (held out; accuracy reported in metrics.json)
    calib 200 samples  -> calib.npz  (carved from the non-test portion, never trained on)
    train the rest (1237)

Network (logits out, no softmax; argmax gives the class):
    Transpose(NHWC->NCHW) - Conv 3x3 8ch pad 1 - BatchNorm - Relu
    - Conv 3x3 16ch pad 1 - BatchNorm - Relu - MaxPool 2x2 - AveragePool 2x2
    - Flatten - Gemm(64 -> 10)
The convolutions have no bias (BatchNorm supplies the shift), the usual PyTorch
idiom, so fold-batchnorm must create the folded bias:
    W' = W * gamma / sqrt(var + eps),  b' = beta - mean * gamma / sqrt(var + eps).

Outputs written next to this file: digits.onnx, calib.npz, test.npz, metrics.json.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
SEED = 0
TEST_SAMPLES = 360
CALIB_SAMPLES = 200
EPOCHS = 60
BATCH = 32
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 13


class DigitsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.maxpool = nn.MaxPool2d(2)
        self.avgpool = nn.AvgPool2d(2)
        self.dense = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # NHWC graph input -> NCHW for the convolutions
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(self.maxpool(x))
        return self.dense(torch.flatten(x, 1))


def make_splits():
    """Return (train, calib, test) as (x [N,8,8,1] float32 in [0,1], y int64 [N])."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., None]  # exact: multiples of 1/16
    y = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=TEST_SAMPLES, stratify=y, random_state=SEED)
    x_train, x_calib, y_train, y_calib = train_test_split(
        x_rest, y_rest, test_size=CALIB_SAMPLES, stratify=y_rest, random_state=SEED)
    return (x_train, y_train), (x_calib, y_calib), (x_test, y_test)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray) -> None:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if epoch % 10 == 9 or epoch == EPOCHS - 1:
            print(f"epoch {epoch + 1:3d}  train loss {total / len(xt):.4f}")
    model.eval()


def count_macs(model: nn.Module) -> dict[str, int]:
    """Multiply-accumulates per Conv2d/Linear layer for one sample (BN folds away)."""
    macs: dict[str, int] = {}

    def hook(name):
        def record(module, inputs, output):
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                per_out = module.in_channels // module.groups * kh * kw
                macs[name] = output.numel() * per_out
            else:
                macs[name] = output.numel() * module.in_features
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 8, 8, 1))
    for h in handles:
        h.remove()
    return macs


# ONNX op type -> readable node name; repeated types get 1, 2, ... in graph order.
_NODE_NAMES = {"Transpose": "to_nchw", "Conv": "conv", "BatchNormalization": "bn",
               "Relu": "relu", "MaxPool": "maxpool", "AveragePool": "avgpool",
               "Flatten": "flatten", "Gemm": "dense"}


def export_onnx(model: nn.Module) -> onnx.ModelProto:
    buf = io.BytesIO()
    # The TorchScript exporter (dynamo=False) with TrainingMode.PRESERVE on an
    # eval-mode model keeps BatchNormalization as a node: TrainingMode.EVAL would
    # run the eval peephole that folds BN into Conv, leaving qcc's
    # fold-batchnorm pass nothing to fold.
    torch.onnx.export(
        model, (torch.zeros(1, 8, 8, 1),), buf, dynamo=False,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=OPSET,
        training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    proto = onnx.load_from_string(buf.getvalue())
    graph = proto.graph
    graph.name = "digits"
    graph.doc_string = "8x8 digits CNN; input NHWC pixel/16 in [0,1]; output logits (no softmax)"
    counts: dict[str, int] = {}
    ops = [n.op_type for n in graph.node]
    renamed: dict[str, str] = {}
    for node in graph.node:
        base = _NODE_NAMES.get(node.op_type, node.op_type.lower())
        counts[base] = counts.get(base, 0) + 1
        node.name = f"{base}{counts[base]}" if ops.count(node.op_type) > 1 else base
        node.doc_string = ""
        for i, out in enumerate(node.output):
            if out != OUTPUT_NAME:
                renamed[out] = f"{node.name}_out"
                node.output[i] = renamed[out]
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but with a fixed zip timestamp so reruns are byte-identical."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(value), allow_pickle=False)


def onnx_logits(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """Run every sample through the batch-1 model; x is [N, 8, 8, 1]."""
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {INPUT_NAME: s[None]})[0] for s in x])


def main() -> None:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # fixed reduction order -> identical weights on rerun

    (x_train, y_train), (x_calib, y_calib), (x_test, y_test) = make_splits()
    model = DigitsNet()
    train(model, x_train, y_train)

    proto = export_onnx(model)
    model_bytes = proto.SerializeToString()
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_test)).numpy()
    ort_logits = onnx_logits(model_bytes, x_test)
    max_diff = float(np.abs(ort_logits - torch_logits).max())
    if max_diff >= 1e-4:
        raise SystemExit(f"onnxruntime differs from torch by {max_diff:.3g} (limit 1e-4)")

    correct = int((ort_logits.argmax(1) == y_test).sum())
    calib_correct = int((onnx_logits(model_bytes, x_calib).argmax(1) == y_calib).sum())
    train_correct = int((onnx_logits(model_bytes, x_train).argmax(1) == y_train).sum())
    macs = count_macs(model)
    metrics = {
        "input": {"name": INPUT_NAME, "shape": [1, 8, 8, 1], "dtype": "float32",
                  "layout": "NHWC", "scaling": "pixel / 16, in [0, 1]"},
        "output": {"name": OUTPUT_NAME, "shape": [1, 10], "dtype": "float32",
                   "meaning": "logits (no softmax)"},
        "test_samples": len(y_test),
        "test_correct": correct,
        "test_accuracy": correct / len(y_test),
        "calib_samples": len(y_calib),
        "calib_correct": calib_correct,
        "train_samples": len(y_train),
        "train_correct": train_correct,
        "parameters": sum(p.numel() for p in model.parameters()),
        "macs": sum(macs.values()),
        "macs_per_layer": macs,
        "onnx_vs_torch_max_abs_diff": max_diff,
        "onnx_ops": sorted({n.op_type for n in proto.graph.node}),
        "seed": SEED,
        "torch_version": torch.__version__.split("+")[0],
    }

    (HERE / "digits.onnx").write_bytes(model_bytes)
    # One extra leading sample axis over the graph input shape [1, 8, 8, 1].
    save_npz(HERE / "calib.npz", {INPUT_NAME: x_calib[:, None]})
    save_npz(HERE / "test.npz", {INPUT_NAME: x_test[:, None], "labels": y_test})
    (HERE / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"test accuracy {correct}/{len(y_test)} = {correct / len(y_test):.4f}; "
          f"calib {calib_correct}/{len(y_calib)}; train {train_correct}/{len(y_train)}")
    print(f"params {metrics['parameters']}, MACs {metrics['macs']}, "
          f"onnxruntime vs torch max |diff| {max_diff:.2e}")


if __name__ == "__main__":
    main()
