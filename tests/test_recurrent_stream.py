"""Streaming recurrent state (``qcc --stream-state``, passes/stream_state.py): one frame per call gives
the whole sequence's outputs bit for bit, in the simulator and in C (host gcc with sanitizers), and
NAME_reset() starts a new sequence."""
from __future__ import annotations

import copy
import subprocess

import numpy as np
import onnx
import pytest

from qcc.backends.cmsis import harness
from qcc.backends.cmsis.generate import generate
from qcc.errors import QccError
from qcc.fileio import write_files
from qcc.sim.interpreter import run_graph
from qcc.sim.qmn import quantize_array
from qcc.sim.recurrent import run_stream
from qcc.tools.compile import main as qcc_main
from qcc.transforms.passmanager import PassManager

from conftest import shared_model_path
from recurrent_models import classifier_model, crnn_model, torch_style_model
from test_backend_cmsis import compile_and_compare, needs_gcc
from test_qmn import quantize


@pytest.fixture(scope="module")
def clips():
    return np.load(shared_model_path("kws_dscnn", "mfcc_real_float.npy")).reshape(22, 1, 49, 10)


def _lowered(model, tmp_path, bits, xs):
    onnx.save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", input=xs)
    return quantize(tmp_path / "model.onnx", f"qmn{{bits={bits}}}", tmp_path / "calib.npz")


def _streamed(graph, frames=1):
    s = copy.deepcopy(graph)
    PassManager.parse(f"stream-state{{frames={frames}}}").run(s)
    return s


@pytest.mark.parametrize("kind, lbr", [("LSTM", 0), ("GRU", 0), ("GRU", 1)])
@pytest.mark.parametrize("bits", [8, 16])
def test_simulator_stream_equals_whole_sequence(tmp_path, clips, kind, lbr, bits):
    fl, _, q = _lowered(classifier_model(kind, hidden=12, linear_before_reset=lbr), tmp_path, bits, clips)
    s = _streamed(q)
    assert s.inputs[0].shape == (1, 1, 10) and len(s.find("qcc.state")) == (2 if kind == "LSTM" else 1)
    for clip in clips[:3]:
        whole = run_graph(q, {"input": clip})["logits"]
        outs = run_stream(s, [{"input": clip[:, t:t + 1]} for t in range(49)])
        np.testing.assert_array_equal(outs[-1]["logits"], whole)
        assert not np.array_equal(outs[0]["logits"], whole)  # the state really carries the sequence
    # Seven frames per call, and the float graph streams the same way.
    f7 = _streamed(fl, 7)
    outs = run_stream(f7, [{"input": clips[0][:, t:t + 7]} for t in range(0, 49, 7)])
    np.testing.assert_array_equal(outs[-1]["logits"], run_graph(fl, {"input": clips[0]})["logits"])


@needs_gcc
@pytest.mark.parametrize("kind, lbr, bits", [("LSTM", 0, 16), ("GRU", 0, 8), ("GRU", 1, 16)])
def test_c_stream_equals_whole_sequence(tmp_path, clips, kind, lbr, bits):
    """49 calls of one frame (the harness never resets) == one call of 49 frames, byte for byte."""
    _, _, q = _lowered(classifier_model(kind, hidden=12, linear_before_reset=lbr), tmp_path, bits, clips)
    _, whole = compile_and_compare(q, tmp_path / "whole", {"input": clips[:1]})
    s = _streamed(q)
    gen = generate(s, "net", "cortex-m4")
    header = gen.files["net.h"].decode()
    assert "void net_reset(void);" in header
    folder = tmp_path / "stream"
    write_files({folder / k: v for k, v in gen.files.items()})
    frames = {"input": clips[0].reshape(49, 1, 1, 10)}
    count = harness.write_samples(folder / "in.bin", s, frames)
    harness.run_host(harness.build_host(folder, gen.name), folder / "in.bin", folder / "out.bin")
    got = harness.read_outputs(folder / "out.bin", gen, count)
    np.testing.assert_array_equal(got.quantized[0][-1], whole.quantized[0][0])
    want = run_stream(s, [{"input": f} for f in frames["input"]])
    deq = s.outputs[0].producer.operands[0]
    np.testing.assert_array_equal(got.floats[0], np.stack([w["logits"] for w in want]))
    assert gen.plan.states and deq.type.dtype in ("i8", "i16")
    # The state buffers are exactly the recurrent state: H values per state, in the arena.
    state_bytes = sum(v.type.size * v.type.np_dtype.itemsize for v in gen.plan.states)
    assert state_bytes == 12 * bits // 8 + (12 * 2 if kind == "LSTM" else 0)  # h, and the int16 cell state


@needs_gcc
@pytest.mark.parametrize("kind, bits", [("LSTM", 16), ("GRU", 8)])
def test_torch_last_step_output_streams(tmp_path, clips, kind, bits):
    """PyTorch's out[:, -1, :] (a Gather of Y's last step) reads the final state when streamed."""
    _, _, q = _lowered(torch_style_model(kind, hidden=12), tmp_path, bits, clips)
    s = _streamed(q)
    assert not s.find("nn.gather")
    for clip in clips[:2]:
        outs = run_stream(s, [{"input": clip[:, t:t + 1]} for t in range(49)])
        np.testing.assert_array_equal(outs[-1]["logits"], run_graph(q, {"input": clip})["logits"])
    _, whole = compile_and_compare(q, tmp_path / "whole", {"input": clips[:1]})
    gen = generate(s, "net", "cortex-m4")
    write_files({tmp_path / "s" / k: v for k, v in gen.files.items()})
    count = harness.write_samples(tmp_path / "in.bin", s, {"input": clips[0].reshape(49, 1, 1, 10)})
    harness.run_host(harness.build_host(tmp_path / "s", gen.name), tmp_path / "in.bin", tmp_path / "out.bin")
    got = harness.read_outputs(tmp_path / "out.bin", gen, count)
    np.testing.assert_array_equal(got.quantized[0][-1], whole.quantized[0][0])


MAIN = r"""
#include <stdio.h>
#include <string.h>
#include "net.h"
static const %(T)s frames[%(N)d][%(I)d] = { %(DATA)s };
static %(O)s first[NET_OUTPUT_SIZE];
int main(void)
{
    for (int pass = 0; pass < 2; pass++) {
        net_reset();
        for (int t = 0; t < %(N)d; t++) {
            memcpy(net_input(), frames[t], sizeof frames[t]);
            net_invoke();
        }
        if (pass == 0)
            memcpy(first, net_output(), sizeof first);
        else if (memcmp(first, net_output(), sizeof first) != 0)
            return 1;
    }
    for (int i = 0; i < NET_OUTPUT_SIZE; i++)
        printf("%%d\n", (int)first[i]);
    return 0;
}
"""


@needs_gcc
def test_reset_starts_a_new_sequence(tmp_path, clips):
    """Run a clip, reset, run it again: the same final outputs (without the reset they differ)."""
    _, _, q = _lowered(classifier_model("LSTM", hidden=8), tmp_path, 16, clips)
    s = _streamed(q)
    gen = generate(s, "net", "cortex-m4")
    folder = tmp_path / "c"
    write_files({folder / k: v for k, v in gen.files.items()})
    quant = s.ops[[op.opname for op in s.ops].index("q.quantize")].result.type
    data = quantize_array(clips[0].reshape(49, 10), quant.quant, quant.np_dtype)
    (folder / "main.c").write_text(MAIN % {"T": "int16_t", "O": "int16_t", "N": 49, "I": 10,
                                           "DATA": ", ".join("{" + ", ".join(map(str, r)) + "}" for r in data)})
    exe = folder / "main"
    subprocess.run(["gcc", *harness.HOST_CFLAGS, "-I", str(folder), str(folder / "net.c"),
                    str(folder / "net_weights.c"), str(folder / "main.c"), "-o", str(exe)], check=True)
    proc = subprocess.run([str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    want = run_stream(s, [{"input": clips[0][:, k:k + 1]} for k in range(49)])[-1]
    deq = s.outputs[0].producer.operands[0]
    got = np.array([int(v) for v in proc.stdout.split()])
    np.testing.assert_array_equal(got, quantize_array(want["logits"], deq.type.quant, deq.type.np_dtype).reshape(-1))


def test_stream_refusals_name_the_node(tmp_path, clips):
    xs = clips.reshape(22, 1, 1, 49, 10)
    _, _, q = _lowered(crnn_model([("GRU", 1)], hidden=8), tmp_path, 8, xs)
    with pytest.raises(QccError, match="rnn0.*conv front end") as e:
        _streamed(q)
    assert e.value.exit_code == 2
    streamed = _streamed(q, 0)  # state kept, whole 20-step sequences per call: fine
    assert len(streamed.find("qcc.state")) == 1
    with pytest.raises(QccError, match="not a multiple of 8 frames"):
        _, _, q2 = _lowered(classifier_model("GRU", hidden=8), tmp_path, 8, clips)
        _streamed(q2, 8)


def test_qcc_stream_state_command(tmp_path, clips, capsys):
    onnx.save(classifier_model("GRU", hidden=8), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", input=clips)
    assert qcc_main([str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out" / "kws.c"), "--target", "cortex-m4",
                     "--calib", str(tmp_path / "calib.npz"), "--bits", "16", "--stream-state"]) == 0
    header = (tmp_path / "out" / "kws.h").read_text()
    assert "void kws_reset(void);" in header and "#define KWS_INPUT0_SIZE 10" in header
