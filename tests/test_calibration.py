"""Calibration: data streaming, statistics, range methods and the calibrate pass."""
from __future__ import annotations

import io
import json
import tracemalloc
import zlib

import numpy as np
import pytest

from conftest import shared_model_path
from qcc import Graph, InputError, TensorType
from qcc.quant.calibration import (CalibrationData, TensorStats, collect_stats, compute_range, iter_calibration_batches,
                             load_act_max, _Progress)
from qcc.sim.interpreter import run_graph, run_graph_all
from qcc.transforms.passmanager import PassManager, make_pass

RNG = np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _data_per_test(request):
    """Each test draws its own data, whatever ran before it (xdist spreads tests over workers)."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(request.node.name.encode()))


# ---------------------------------------------------------------- helpers
def tiny_graph(shape=(1, 4, 4, 1)) -> Graph:
    """x -> conv c1 (1x1, 2 channels) -> relu r1 -> flatten; the bias is computed from constants."""
    g = Graph("tiny")
    x = g.add_input("x", TensorType(shape, "f32"))
    w = g.add_const(np.array([1.0, -0.5], np.float32).reshape(2, 1, 1, 1), name="w")
    b = g.add_op("nn.add", [g.add_const(np.array([0.5, -0.25], np.float32), name="b0"),
                            g.add_const(np.array([0.25, 0.0], np.float32), name="b1")], name="bsum").result
    c = g.add_op("nn.conv2d", [x, w, b], {"pads": [0, 0, 0, 0], "strides": [1, 1], "layout": "NHWC"},
                 name="c1").result
    r = g.add_op("nn.relu", [c], name="r1").result
    f = g.add_op("nn.flatten", [r], {"axis": 1}, name="flat").result
    g.set_outputs([f], ["y"])
    return g


def two_input_graph() -> Graph:
    g = Graph("two")
    a = g.add_input("a", TensorType((1, 3), "f32"))
    b = g.add_input("b", TensorType((1, 3), "f32"))
    s = g.add_op("nn.add", [a, b], name="s").result
    g.set_outputs([g.add_op("nn.sigmoid", [s], name="sig").result], ["y"])
    return g


def ranges(g: Graph) -> dict:
    """{name of the ranged tensor's producer (or input): (min, max)}."""
    out = {}
    for op in g.find("q.range"):
        v = op.operands[0]
        out[v.producer.name if v.producer else v.name] = (op.attrs["min"], op.attrs["max"])
    return out


def drain(it) -> list:
    return [{k: a.copy() for k, a in b.items()} for b in it]


# ---------------------------------------------------------------- statistics
def test_histogram_matches_numpy_and_merges_exactly():
    x = RNG.normal(0, 3, 10_000)
    s = TensorStats(2048).update(x)
    assert (s.min, s.max, s.count) == (x.min(), x.max(), x.size)
    top = 2.0 ** s.exponent
    assert np.abs(x).max() < top <= 2 * np.abs(x).max()
    ref, _ = np.histogram(np.abs(x), bins=2048, range=(0, top))
    assert np.array_equal(s.abs_hist, ref)
    ref_pos, _ = np.histogram(x[x >= 0], bins=2048, range=(0, top))
    assert np.array_equal(s.pos, ref_pos)
    # Small data first, then data that widens the range 2^5 times: re-binning is exact.
    parts = [x[:10] * 0.01, x[10:5000], x[5000:] * 40]
    whole = TensorStats(2048).update(np.concatenate(parts))
    streamed = TensorStats(2048)
    for p in parts:
        streamed.update(p)
    merged = TensorStats(2048).update(parts[2]).merge(TensorStats(2048).update(parts[0])) \
        .merge(TensorStats(2048).update(parts[1]))
    assert streamed == whole and merged == whole


def test_all_zero_then_data_and_non_finite():
    s = TensorStats(16).update(np.zeros(5)).update(np.array([3.0, -1.0]))
    assert s == TensorStats(16).update(np.array([0, 0, 0, 0, 0, 3.0, -1.0]))
    assert s.abs_hist[0] == 5 and s.count == 7
    with pytest.raises(InputError, match="NaN or infinite"):
        TensorStats(16, "conv1").update(np.array([1.0, np.inf]))


# ---------------------------------------------------------------- range methods
def gaussian_with_outliers(n=200_000):
    x = RNG.normal(0, 1, n)
    x[:20] = RNG.choice([-1, 1], 20) * RNG.uniform(30, 40, 20)
    return x


def test_minmax_and_percentile_match_numpy():
    x = gaussian_with_outliers()
    s = TensorStats().update(x)
    assert compute_range(s, "minmax") == (x.min(), x.max())
    lo, hi = compute_range(s, "percentile", p=99.9)
    t = np.percentile(np.abs(x), 99.9)
    assert hi == pytest.approx(t, abs=float(s.width)) and lo == -hi
    lo, hi = compute_range(s, "percentile", p=99.9, symmetric=False)
    assert lo == pytest.approx(np.percentile(x, 0.1), abs=float(s.width))
    assert hi == pytest.approx(np.percentile(x, 99.9), abs=float(s.width))
    # Non-negative data keeps its lower bound: clipping never widens the observed range.
    r = np.abs(x) + 0.5
    assert compute_range(TensorStats().update(r), "percentile")[0] == r.min()


def test_clipping_methods_clip_outliers_and_keep_uniform_ranges():
    x = gaussian_with_outliers()
    s = TensorStats().update(x)
    for method in ("percentile", "entropy"):
        lo, hi = compute_range(s, method)
        assert 2 < hi < 0.5 * x.max() and lo == -hi, method
    # 20 outliers at 30-40 sigma cost more clipped than kept at 8 bits: mse trims only the top one.
    assert x[np.abs(x) > 5].size == 20 and 30 < compute_range(s, "mse")[1] < x.max()
    # Plain Gaussian at 4 bits: the MSE-optimal clip is 2.55 sigma (Banner et al., ACIQ), max is ~4.9.
    g = RNG.normal(0, 2, 200_000)
    assert compute_range(TensorStats().update(g), "mse", bits=4)[1] == pytest.approx(2.55 * 2, rel=0.05)
    u = RNG.uniform(-5, 5, 100_000)
    su = TensorStats().update(u)
    far = RNG.uniform(3, 4, 10_000)  # data away from zero: no method may collapse the range
    sf = TensorStats().update(far)
    for method in ("minmax", "percentile", "entropy", "mse"):
        lo, hi = compute_range(su, method)
        assert hi >= 0.97 * u.max() and lo <= 0.97 * u.min(), method
        lo, hi = compute_range(sf, method)
        assert lo == far.min() and hi >= 0.99 * far.max(), method


def test_entropy_levels_parameter():
    x = gaussian_with_outliers()
    s = TensorStats().update(x)
    assert compute_range(s, "entropy", bits=16) == (x.min(), x.max())  # 32768 levels > histogram bins
    assert compute_range(s, "entropy", bits=8) == compute_range(s, "entropy", levels=128)
    assert compute_range(s, "entropy", levels=512)[1] > compute_range(s, "entropy", levels=32)[1]


def true_quant_mse(x, t, bits):
    d = t / (2 ** (bits - 1) - 1)
    q = np.clip(np.round(x / d), -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) * d
    return np.mean((x - q) ** 2)


@pytest.mark.parametrize("bits", [4, 8])
def test_mse_threshold_is_near_the_true_optimum(bits):
    x = gaussian_with_outliers(100_000)
    s = TensorStats().update(x)
    t = compute_range(s, "mse", bits=bits)[1]
    grid = np.linspace(0.5, 40, 800)
    errors = np.array([true_quant_mse(x, g, bits) for g in grid])
    assert true_quant_mse(x, t, bits) <= errors.min() * 1.05
    assert compute_range(s, "mse", bits=16)[1] > compute_range(s, "mse", bits=8)[1] > t * (bits == 4)


def test_unknown_method_and_bad_options():
    s = TensorStats().update(np.arange(5.0))
    with pytest.raises(InputError, match="unknown calibration method 'kl'"):
        compute_range(s, "kl")
    with pytest.raises(InputError, match="bad option"):
        compute_range(s, "minmax", p=3)
    with pytest.raises(InputError, match="percentile p"):
        compute_range(s, "percentile", p=0)
    with pytest.raises(InputError, match="no calibration data reached tensor 't'"):
        compute_range(TensorStats(name="t"), "minmax")


# ---------------------------------------------------------------- data
def test_npz_layouts_batches_and_order(tmp_path):
    g = tiny_graph()
    data = RNG.normal(size=(70, 1, 4, 4, 1)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=data, labels=np.arange(70))
    np.savez_compressed(tmp_path / "b.npz", x=data[:, 0])  # batch-1 rule: [N, 4, 4, 1]
    np.save(tmp_path / "c.npy", data[:, 0].astype(np.float64))  # float64 is cast to the input's f32
    for name in ("a.npz", "b.npz", "c.npy"):
        batches = drain(iter_calibration_batches(tmp_path / name, g, batch_size=32))
        assert [b["x"].shape for b in batches] == [(32, 1, 4, 4, 1), (32, 1, 4, 4, 1), (6, 1, 4, 4, 1)]
        assert all(b["x"].dtype == np.float32 for b in batches)
        assert np.array_equal(np.concatenate([b["x"] for b in batches]), data), name
    assert CalibrationData(tmp_path / "a.npz", g).num_samples == 70


def test_folders_single_and_multi_input(tmp_path):
    g = tiny_graph()
    data = RNG.normal(size=(7, 1, 4, 4, 1)).astype(np.float32)
    folder = tmp_path / "single"
    folder.mkdir()
    np.save(folder / "s0.npy", data[0])          # one sample, batch axis kept
    np.save(folder / "s1.npy", data[1, 0])       # one sample without its batch axis
    np.save(folder / "s2.npy", data[2:5])        # a stack [N, 1, 4, 4, 1]
    np.save(folder / "s3.npy", data[5:, 0])      # a stack [N, 4, 4, 1]
    got = np.concatenate([b["x"] for b in drain(iter_calibration_batches(folder, g, batch_size=3))])
    assert np.array_equal(got, data)

    g2 = two_input_graph()
    a, b = RNG.normal(size=(2, 5, 1, 3)).astype(np.float32)
    for name, arr in (("a", a), ("b", b)):
        (tmp_path / "multi" / name).mkdir(parents=True)
        for i in range(5):
            np.save(tmp_path / "multi" / name / f"{i:03d}.npy", arr[i])
    batches = drain(iter_calibration_batches(tmp_path / "multi", g2, batch_size=2))
    assert np.array_equal(np.concatenate([x["a"] for x in batches]), a)
    assert np.array_equal(np.concatenate([x["b"] for x in batches]), b)
    np.save(tmp_path / "multi" / "b" / "999.npy", b[0])
    with pytest.raises(InputError, match="hold different files.*999.npy"):
        iter_calibration_batches(tmp_path / "multi", g2)


@pytest.mark.parametrize("content, message", [
    (dict(y=np.zeros((3, 4, 4, 1), np.float32)), r"no array for graph input 'x' \(it holds: y\)"),
    (dict(x=np.zeros((3, 4, 5, 1), np.float32)), r"x\].* has shape \[3, 4, 5, 1\].*expected \[N, 1, 4, 4, 1\]"),
    (dict(x=np.array([["a"] * 16] * 2).reshape(2, 4, 4, 1)), r"dtype <U1.*needs a float or integer"),
    (dict(x=np.zeros((2, 4, 4, 1), bool)), r"dtype bool"),
])
def test_bad_npz_files(tmp_path, content, message):
    np.savez(tmp_path / "bad.npz", **content)
    with pytest.raises(InputError, match=message) as e:
        iter_calibration_batches(tmp_path / "bad.npz", tiny_graph())
    assert "bad.npz" in str(e.value)


def test_bad_paths(tmp_path):
    g = tiny_graph()
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "two.npy", np.zeros((2, 1, 3), np.float32))
    (tmp_path / "data.csv").write_text("1,2\n")
    np.save(tmp_path / "cut.npy", np.zeros((40, 4, 4, 1), np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:-100])
    with pytest.raises(InputError, match="cut.npy' is truncated or unreadable"):
        drain(iter_calibration_batches(tmp_path / "cut.npy", g))
    cases = [(tmp_path / "junk.npz", "junk.npz' is not a readable .npz"),
             (tmp_path / "data.csv", "must be an .npz file, an .npy file or a folder"),
             (tmp_path / "junk.npy", "junk.npy' is not a readable .npy"),
             (tmp_path / "missing.npz", "does not exist"),
             (tmp_path / "empty", "holds no .npy files"),
             (tmp_path / "x.csv", "does not exist")]
    for path, message in cases:
        with pytest.raises(InputError, match=message):
            iter_calibration_batches(path, g)
    with pytest.raises(InputError, match="one .npy array, but graph @two has 2 inputs"):
        iter_calibration_batches(tmp_path / "two.npy", two_input_graph())


def test_streaming_memory_is_flat(tmp_path):
    """10k samples (19.6 MB): the peak of Python allocations stays about one batch."""
    g = Graph("big")
    x = g.add_input("x", TensorType((1, 49, 10, 1), "f32"))
    g.set_outputs([g.add_op("nn.relu", [x], name="r").result], ["y"])
    data = np.lib.format.open_memmap(tmp_path / "big.npy", "w+", np.float32, (10_000, 49, 10, 1))
    data[:] = RNG.normal(size=(10_000, 49, 10, 1)).astype(np.float32)
    expect = (float(data.min()), float(data.max()))
    data.flush()
    del data
    np.savez_compressed(tmp_path / "big.npz", x=np.load(tmp_path / "big.npy"))
    size = (tmp_path / "big.npy").stat().st_size
    for name in ("big.npy", "big.npz"):
        tracemalloc.start()
        n = sum(b["x"].shape[0] for b in iter_calibration_batches(tmp_path / name, g, batch_size=32))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert n == 10_000 and peak < size / 20, (name, peak, size)
    tracemalloc.start()
    stats = collect_stats(g, tmp_path / "big.npy", [g.outputs[0]], batch_size=64)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < size / 10 and stats[0].count == 10_000 * 490
    assert (stats[0].min, stats[0].max) == (max(expect[0], 0.0), expect[1])


def test_progress_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    for stream, shown in ((Tty(), True), (io.StringIO(), False)):
        p = _Progress(5, stream)
        p.add(2)
        p.add(3)
        p.close()
        assert (stream.getvalue() == "\rcalibrate: 2/5 samples\rcalibrate: 5/5 samples\n") == shown
        assert shown or stream.getvalue() == ""


# ---------------------------------------------------------------- the pass
@pytest.fixture
def tiny_npz(tmp_path):
    data = RNG.normal(size=(50, 4, 4, 1)).astype(np.float32)
    path = tmp_path / "calib.npz"
    np.savez(path, x=data)
    return path, data


def test_pass_minmax_matches_numpy(tiny_npz):
    path, data = tiny_npz
    g = tiny_graph()
    before = [run_graph_all(g, {"x": d[None]}) for d in data]
    values = {op.name: op.result for op in g.ops if op.name in ("c1", "r1")}
    report = PassManager.parse(f"calibrate{{data={path},batch=7}}").run(g)
    assert report.stats()[f"0:calibrate{{data={path},batch=7}}"] == {"ranges": 3, "overrides": 0, "samples": 50}
    got = ranges(g)
    assert set(got) == {"x", "c1", "r1"}  # not the constant bias sum, not the flatten
    assert got["x"] == (data.min(), data.max())
    for name, v in values.items():
        stacked = np.stack([env[v] for env in before])
        assert got[name] == (stacked.min(), stacked.max()), name
    # A second run changes nothing (idempotent).
    assert not PassManager.parse(f"calibrate{{data={path}}}").run(g).modified


def test_pass_output_is_ranged_and_numerics_kept(tiny_npz):
    path, data = tiny_npz
    g = tiny_graph()
    ref = run_graph(g, {"x": data[:1]})["y"]
    PassManager.parse(f"calibrate{{data={path},method=percentile,p=99}}").run(g)
    assert np.array_equal(run_graph(g, {"x": data[:1]})["y"], ref)
    lo, hi = ranges(g)["x"]
    assert hi == pytest.approx(np.percentile(np.abs(data), 99), abs=float(2 * np.abs(data).max() / 2048))


def test_jobs_2_equals_jobs_1(tiny_npz):
    path, _ = tiny_npz
    g = tiny_graph()
    values = [g.inputs[0]] + [op.result for op in g.ops if op.name in ("c1", "r1")]
    one = collect_stats(g, path, values, batch_size=6, jobs=1)
    two = collect_stats(g, path, values, batch_size=6, jobs=2)
    assert one == two
    results = []
    for jobs in (1, 2):
        h = tiny_graph()
        PassManager.parse(f"calibrate{{data={path},method=entropy,jobs={jobs},batch=5}}").run(h)
        results.append(ranges(h))
    assert results[0] == results[1]


def test_context_data_and_act_max_overrides(tiny_npz, tmp_path):
    path, data = tiny_npz
    g = tiny_graph()
    p = make_pass("calibrate", {"act_max": "[r1=6]"})
    p.context = {"calib": str(path), "act_max": {"c1": 32.0, "r1": 1.0}}
    assert p.run(g).stats["overrides"] == 2
    got = ranges(g)
    assert got["c1"] == (-32.0, 32.0) and got["r1"] == (-6.0, 6.0)  # the pass option wins
    assert got["x"] == (data.min(), data.max())
    h = tiny_graph()  # the driver may put the context on the graph instead
    h.context = {"calib": str(path), "act_max": {"c1": 32.0}}
    make_pass("calibrate", {}).run(h)
    assert ranges(h)["c1"] == (-32.0, 32.0) and ranges(h)["x"] == got["x"]


def test_override_errors_and_missing_data():
    g = tiny_graph()
    with pytest.raises(InputError, match="unknown tensor 'conv1'; close matches: 'c1'") as e:
        make_pass("calibrate", {"act_max": "[x=1,c1=2,r1=3,conv1=32]"}).run(g)
    with pytest.raises(InputError, match="flatten result, which shares the range"):
        make_pass("calibrate", {"act_max": "[flat=4]"}).run(g)
    with pytest.raises(InputError, match=r"no calibration data for 2 tensor\(s\).*pass --calib") as e:
        make_pass("calibrate", {"act_max": "[x=1]"}).run(g)
    assert "'c1'" in str(e.value)
    # Every tensor overridden: no data needed.
    assert make_pass("calibrate", {"act_max": "[x=1,c1=2,r1=3]"}).run(g).stats["ranges"] == 3


def path_named_graph() -> Graph:
    g = Graph("m")
    x = g.add_input("input_1", TensorType((1, 3), "f32"))
    r = g.add_op("nn.relu", [x], name="model/block1/relu").result
    g.set_outputs([g.add_op("nn.sigmoid", [r], name="model/block2/relu").result], ["y"])
    return g


def test_override_names_by_path_suffix():
    g = path_named_graph()
    make_pass("calibrate", {"act_max": "[input_1=1,block1/relu=2,block2/relu=3]"}).run(g)
    assert ranges(g) == {"input_1": (-1.0, 1.0), "model/block1/relu": (-2.0, 2.0), "model/block2/relu": (-3.0, 3.0)}
    with pytest.raises(InputError, match="matches 2 tensors"):
        make_pass("calibrate", {"act_max": "[relu=2]"}).run(path_named_graph())


def test_load_act_max(tmp_path):
    f = tmp_path / "act.json"
    f.write_text(json.dumps({"conv1": 32, "relu2": 8.5}))
    assert load_act_max(str(f)) == {"conv1": 32.0, "relu2": 8.5}
    assert load_act_max(["conv1=32", "a/b=4"]) == {"conv1": 32.0, "a/b": 4.0}
    assert load_act_max("conv1=2") == {"conv1": 2.0}
    assert load_act_max(None) == {} and load_act_max({"x": 1}) == {"x": 1.0}
    for bad, message in (("conv1", "NAME=MAX"), ("conv1=abc", "must be a number"), ("conv1=-1", "positive")):
        with pytest.raises(InputError, match=message):
            load_act_max([bad])
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(InputError, match="bad.json':1:2"):
        load_act_max(str(tmp_path / "bad.json"))


def test_bad_pass_options():
    with pytest.raises(InputError, match="unknown method 'kl'"):
        PassManager.parse("calibrate{method=kl}")


# ---------------------------------------------------------------- real model
def test_kws_dscnn_calibration_on_real_mfcc():
    import qcc
    model = shared_model_path("kws_dscnn", "kws_dscnn_float.onnx")
    mfcc = shared_model_path("kws_dscnn", "mfcc_real_float.npy")
    g = qcc.load_onnx(model)
    x = np.load(mfcc)
    assert x.shape == (22, 49, 10, 1) and g.inputs[0].shape == (1, 49, 10, 1)  # the batch-1 rule
    ref = run_graph(g, {"input_1": x[:1]})["Identity"]
    counts = {}
    for op in g.ops:
        counts[op.opname] = counts.get(op.opname, 0) + 1
    PassManager.parse(f"calibrate{{data={mfcc},method=minmax}}").run(g)
    ranged = [op.operands[0] for op in g.find("q.range")]
    kinds = {}
    for v in ranged:
        k = v.producer.opname if v.producer else "input"
        kinds[k] = kinds.get(k, 0) + 1
    assert kinds == {"input": 1, "nn.conv2d": counts["nn.conv2d"], "nn.relu": counts["nn.relu"],
                     "nn.avgpool": 1, "nn.matmul": 1, "nn.add": 1, "nn.softmax": 1}
    for op in g.ops:  # every compute result feeds only its q.range
        if op.opname in ("nn.conv2d", "nn.relu", "nn.softmax"):
            assert [u.opname for u in g.users(op.result)] == ["q.range"]
        if op.opname in ("nn.reshape", "qcc.const"):
            assert all(u.opname != "q.range" for u in g.users(op.result))
    assert g.outputs[0].producer.opname == "q.range"
    assert ranges(g)["input_1"] == (x.min(), x.max())
    lo, hi = ranges(g)[g.outputs[0].producer.operands[0].producer.name]
    assert 0 <= lo < hi <= 1  # softmax probabilities
    g.verify()
    assert np.array_equal(run_graph(g, {"input_1": x[:1]})["Identity"], ref)
