"""The integer-only network (sw.intref.intnet) against independent int64 references, operation by operation.

The real YOLOv5n at 160 x 160 on a real COCO image, and small generated models (YOLOv5n's, YOLOv7's and YOLOv7-tiny's layer lists at a fraction of their width, at a
64 x 64 input) are calibrated on two coco128 images; every tensor the integer network produces is recomputed
here from its sources with numpy / Python integers and compared code for code with ``==``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sw.errors import QuantizationError
from sw.intref.calibrate import calibrate_tensors
from sw.intref.contract import ActQuant
from sw.intref.graph import INPUT, AddNode, ConcatNode, ConvNode, PoolNode, UpsampleNode, lower
from sw.intref.intnet import IntegerNetwork
from sw.intref.residual import ResidualAdd
from sw.paths import data_file

IMG = 64


def _small(config: str, width: float, seed: int = 0):
    from sw.checkpoint.official import generate_weights
    from sw.models import YoloModel, builtin_config

    cfg = builtin_config(config)
    cfg["width_multiple"] = width
    return generate_weights(YoloModel(cfg), seed=seed)


def _network(model, spec):
    from sw.quant.model import quantize_model

    qm = quantize_model(model, spec, progress=False)
    cal = calibrate_tensors(qm.model, data_file("coco128/images/train2017"), 8, images=2, img_size=IMG,
                            batch_size=2, progress=False)
    return qm, IntegerNetwork(qm, cal)


@pytest.fixture(scope="module")
def v5():
    from sw.quant.model import QuantSpec

    return _network(_small("yolov5n", 0.125), QuantSpec("pwlq", 4, "mix3"))


@pytest.fixture(scope="module")
def v7():
    from sw.quant.model import QuantSpec

    return _network(_small("yolov7-training", 0.0625), QuantSpec("affine", 4, "filter"))


@pytest.fixture(scope="module")
def v7_tiny():
    from sw.quant.model import QuantSpec

    return _network(_small("yolov7-tiny-training", 0.125), QuantSpec("symmetric", 4, "cshape"))


def _image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (1, 3, IMG, IMG), generator=g).float() / 255.0)


# ---- independent references (numpy int64 / Python integers) ---------------------------------------------------
def ref_conv(codes: np.ndarray, w: np.ndarray, stride: int, padding: int, pad_code: int) -> np.ndarray:
    """Direct int64 convolution: a sum over kernel taps of shifted input windows."""
    n, c, h, wd = codes.shape
    o, _, kh, kw = w.shape
    x = np.pad(codes, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=pad_code)
    oh, ow = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    acc = np.zeros((n, o, oh, ow), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            window = x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
            acc += np.einsum("nchw,oc->nohw", window, w[:, :, i, j])
    return acc


def ref_epilogue(acc: np.ndarray, offset, multiplier, shift, table, pre_bits: int) -> np.ndarray:
    """The epilogue with Python integers: t = acc + K; p = sat((t M + 2^(R-1)) >> R); LUT[p + 2^(P-1)]."""
    lo, hi = -(1 << (pre_bits - 1)), (1 << (pre_bits - 1)) - 1
    out = np.empty_like(acc)
    for c in range(acc.shape[1]):
        k, m, r = int(offset[c]), int(multiplier[c]), int(shift[c])
        half = (1 << (r - 1)) if r else 0
        for idx, a in np.ndenumerate(acc[:, c]):
            p = min(max(((int(a) + k) * m + half) >> r, lo), hi)
            out[(idx[0], c) + idx[1:]] = int(table[p - lo])
    return out


def ref_add(codes: list[np.ndarray], add: ResidualAdd) -> np.ndarray:
    total = sum((x.astype(object) - q.zero_point) * m for x, q, m in zip(codes, add.inputs, add.multipliers))
    r = add.shift
    rounded = np.vectorize(lambda v: (v + ((1 << (r - 1)) if r else 0)) >> r)(total)
    lo, hi = -(1 << (add.out.bits - 1)), (1 << (add.out.bits - 1)) - 1
    return np.clip(rounded + add.out.zero_point, lo, hi).astype(np.int64)


def ref_pool(x: np.ndarray, k: int, s: int, p: int) -> np.ndarray:
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=np.iinfo(np.int64).min)
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.full((n, c, oh, ow), np.iinfo(np.int64).min, dtype=np.int64)
    for i in range(k):
        for j in range(k):
            out = np.maximum(out, xp[:, :, i:i + s * oh:s, j:j + s * ow:s])
    return out


def _check_every_tensor(net: IntegerNetwork, x: torch.Tensor) -> dict:
    """Every tensor of the integer network equals its independent recomputation from its sources."""
    env = {k: v.numpy() for k, v in net.tensors(x).items()}
    traces = net.trace(x)
    counts = dict.fromkeys(["conv", "head", "add", "concat", "pool", "upsample"], 0)
    image = np.round(x.double().numpy() * 255).astype(np.int64) - 128  # the image quantizer: 1/255, zero -128
    assert (env[INPUT] == image).all()
    for node in net.graph.nodes:
        if isinstance(node, ConvNode):
            layer = net.layers[node.name]
            tr = traces[node.name]
            # tensors() took the float path (ExactConv + FloatEpilogue); trace the int64 definition
            assert layer.fast is not None or layer.head_offset is not None, node.name
            w = layer.contract.weight_int().numpy()
            assert (tr.input.numpy() == env[node.src]).all()
            acc = ref_conv(env[node.src], w, tr.stride, tr.padding, layer.act_in.zero_point)
            assert (tr.acc.numpy() == acc).all(), node.name
            if node.head is not None:
                k = layer.head.offset.numpy().reshape(1, -1, 1, 1)
                s = layer.head.scale.numpy().reshape(1, -1, 1, 1)
                assert (env[node.dst] == (acc + k).astype(np.float64) * s).all()
                counts["head"] += 1
                continue
            e = layer.epilogue
            sub = (slice(None), slice(None), slice(0, 3), slice(0, 3))  # Python-integer epilogue: a corner
            out = ref_epilogue(acc[sub], e.offset, e.multiplier, e.shift, e.table, e.fmt.pre_bits)
            assert (tr.output.numpy()[sub] == out).all(), node.name
            assert (env[node.dst] == tr.output.numpy()).all()
            counts["conv"] += 1
        elif isinstance(node, AddNode):
            assert (env[node.dst] == ref_add([env[s] for s in node.srcs], net.adds[node.dst])).all()
            counts["add"] += 1
        elif isinstance(node, ConcatNode):
            assert len({net.quant[s] for s in node.srcs} | {net.quant[node.dst]}) == 1  # one quantizer
            assert (env[node.dst] == np.concatenate([env[s] for s in node.srcs], 1)).all()
            counts["concat"] += 1
        elif isinstance(node, PoolNode):
            assert net.quant[node.src] == net.quant[node.dst]
            assert (env[node.dst] == ref_pool(env[node.src], node.kernel, node.stride, node.padding)).all()
            counts["pool"] += 1
        elif isinstance(node, UpsampleNode):
            assert net.quant[node.src] == net.quant[node.dst]
            assert (env[node.dst] == env[node.src].repeat(node.scale, 2).repeat(node.scale, 3)).all()
            counts["upsample"] += 1
    return counts


@pytest.mark.slow  # quantizes and calibrates a generated model (20 s)
def test_yolov5n_every_tensor_equals_the_int64_reference(v5):
    _, net = v5
    counts = _check_every_tensor(net, _image())
    assert counts == {"conv": 57, "head": 3, "add": 7, "concat": 13, "pool": 3, "upsample": 2}


@pytest.mark.slow  # quantizes and calibrates a generated model (20 s)
def test_yolov7_every_tensor_equals_the_int64_reference(v7):
    _, net = v7
    counts = _check_every_tensor(net, _image(1))
    assert counts["conv"] + counts["head"] == 92 and counts["head"] == 3 and counts["upsample"] == 2
    assert counts["pool"] == 5 + 3  # five MP downsamplings, SPPCSPC's three pools
    assert {n.activation for n in net.graph.convs.values()} == {"silu", "identity"}


@pytest.mark.slow  # quantizes and calibrates a generated model (20 s)
def test_yolov7_tiny_every_tensor_equals_the_int64_reference(v7_tiny):
    _, net = v7_tiny
    counts = _check_every_tensor(net, _image(2))
    assert counts["pool"] == 6 and counts["head"] == 3
    assert {n.activation for n in net.graph.convs.values() if n.head is None} == {"leaky_relu_0.1"}


@pytest.mark.slow  # quantizes and calibrates a generated model (20 s)
@pytest.mark.parametrize("which", ["v5", "v7", "v7_tiny"])
def test_graph_runs_the_models_forward_pass(which, request):
    qm, net = request.getfixturevalue(which)
    x = _image(3)
    with torch.no_grad():
        assert torch.equal(net.graph.run_float(x), qm.model(x))


@pytest.mark.slow  # quantizes and calibrates a generated model (20 s)
def test_integer_sqnr_covers_every_layer_and_heads_lose_nothing_to_their_dequantization(v5):
    """The per-layer SQNR report: every conv; a Detect conv's integer output differs from the float epilogue's
    only by its bias rounded to the accumulator's step, so it costs (almost) nothing."""
    from sw.intref.compare import integer_sqnr

    _, net = v5
    sqnr = integer_sqnr(net, _image(4))
    assert set(sqnr) == set(net.layers)
    heads = [r for n, r in sqnr.items() if net.layers[n].is_head]
    assert len(heads) == 3 and all(abs(r["epilogue_cost_db"]) < 0.1 for r in heads)


# ---- the rules on their own ------------------------------------------------------------------------------
def test_residual_add_equals_python_integers_and_rounds_the_real_sum():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        qs = [ActQuant(8, float(torch.empty(1).uniform_(0.01, 0.2, generator=g)),
                       int(torch.randint(-128, 0, (1,), generator=g))) for _ in range(3)]
        add = ResidualAdd.derive("add", (qs[0], qs[1]), qs[2])
        x, y = (torch.randint(-128, 128, (4, 8, 5, 5), generator=g) for _ in range(2))
        got = add.apply(x, y)
        assert (got.numpy() == ref_add([x.numpy(), y.numpy()], add)).all()
        assert torch.equal(add.apply_float(x.float(), y.float()), got.float())  # the float64 evaluation
        real = (qs[0].dequantize(x) + qs[1].dequantize(y)) / qs[2].scale + qs[2].zero_point
        # round half up of the fixed-point sum: within half a step plus the multipliers' rounding
        # (each |M_i 2^-R - s_i / s_o| <= 2^-(R+1), times |x_i - z_i| <= 255)
        inside = (real > -128.5) & (real < 127.5)
        assert float((got.double() - real)[inside].abs().max()) <= 0.5 + 255 * 2.0 ** -add.shift


def test_residual_add_rounds_half_up():
    q = ActQuant(8, 1.0, 0)
    add = ResidualAdd("add", (q, q), (1, 1), 1, q)   # (x + y) / 2, rounded half up
    assert add.apply(torch.tensor([1, -1, 3, -3]), torch.tensor([0, 0, 0, 0])).tolist() == [1, 0, 2, -1]
    assert add.apply_float(torch.tensor([1., -1, 3, -3]), torch.zeros(4)).tolist() == [1, 0, 2, -1]


def test_residual_add_in_float_equals_int64_on_every_code_pair():
    """apply_float against apply on all 256 x 256 input codes, for quantizers with far-apart scales."""
    codes = torch.arange(-128, 128)
    x, y = codes.view(-1, 1).expand(256, 256), codes.view(1, -1).expand(256, 256)
    for qa, qb, qo in [(ActQuant(8, 0.05, -120), ActQuant(8, 0.011, -3), ActQuant(8, 0.07, -90)),
                       (ActQuant(8, 0.3, 5), ActQuant(8, 0.29, -128), ActQuant(8, 0.01, 127))]:
        add = ResidualAdd.derive("add", (qa, qb), qo)
        assert torch.equal(add.apply_float(x.float(), y.float()), add.apply(x, y).float())


def test_max_pool_and_upsample_on_codes_equal_quantizing_the_float_result():
    q = ActQuant(8, 0.05, -100)
    x = torch.randn(2, 4, 9, 9) * 3
    codes = q.quantize(x)
    for node in (PoolNode(5, 1, 2, "a", "b"), PoolNode(2, 2, 0, "a", "b"), UpsampleNode(2, "a", "b")):
        float_first = q.quantize(node.apply(x))
        assert torch.equal(node.apply(codes), float_first)


# ---- refusals --------------------------------------------------------------------------------------------
class Foreign(nn.Module):
    def forward(self, x):
        return x


def test_unsupported_module_is_refused_by_name():
    model = _small("yolov5n", 0.125)
    foreign = Foreign()
    foreign.i, foreign.f = 5, -1
    model.model[5] = foreign
    with pytest.raises(QuantizationError, match=r"model\.5: module Foreign has no integer form"):
        lower(model)


def test_training_form_heads_and_unknown_activations_are_refused():
    with pytest.raises(QuantizationError, match="IDetect"):
        lower(_small("yolov7-tiny-training", 0.125))
    model = _small("yolov5n", 0.125)
    model.model[1].act = nn.ReLU()
    with pytest.raises(QuantizationError, match="ReLU"):
        lower(model)


@pytest.mark.slow  # quantizes and calibrates a generated model (20 s)
def test_negative_batchnorm_scale_is_refused_by_name(v5):
    from sw.intref.calibrate import TensorCalibration

    qm, net = v5
    bn = net.graph.convs["model.1.conv"].bn
    kept = float(bn.weight[3].detach())
    with torch.no_grad():
        bn.weight[3] = -0.5
    try:
        cal = TensorCalibration(net.graph, net.quant, {n: 0.01 for n in net.graph.convs})
        with pytest.raises(QuantizationError, match=r"model\.1\.conv: channel 3's scale .* --fold-bn"):
            IntegerNetwork(qm, cal)
    finally:
        with torch.no_grad():
            bn.weight[3] = kept


@pytest.mark.slow  # quantizes and calibrates a generated model (20 s)
def test_partial_calibration_gives_the_whole_networks_quantizers_and_traces(v5):
    qm, net = v5
    chosen = ["model.2.m.0.cv2.conv", "model.4.cv2.conv"]
    cal = calibrate_tensors(qm.model, data_file("coco128/images/train2017"), 8, images=2, img_size=IMG,
                            batch_size=2, progress=False, stop_after=chosen)
    assert len(cal.tensors) < len(net.quant) / 2
    assert all(net.quant[t] == q for t, q in cal.tensors.items())
    assert all(net.layers[n].epilogue.pre_scale == s for n, s in cal.pre_scales.items())
    partial = IntegerNetwork(qm, cal)
    x = _image(5)
    got, whole = partial.trace(x, chosen), net.trace(x, chosen)
    assert set(got) == set(chosen)
    for n in chosen:
        assert torch.equal(got[n].output, whole[n].output) and torch.equal(got[n].acc, whole[n].acc)
    with pytest.raises(QuantizationError, match="not calibrated"):
        partial(x)
    with pytest.raises(QuantizationError, match="no conv 'model.99.conv'"):
        partial.trace(x, ["model.99.conv"])


@pytest.mark.slow  # quantizes the real YOLOv5n (PWLQ search) and calibrates it
def test_real_yolov5n_at_160_on_a_coco_image_equals_the_int64_reference(yolov5n, coco_root):
    from sw.eval.coco import load_coco
    from sw.eval.images import load_letterboxed
    from sw.quant.model import QuantSpec, quantize_model

    qm = quantize_model(yolov5n, QuantSpec("pwlq", 4, "mix3"), progress=False)
    cal = calibrate_tensors(qm.model, data_file("coco128/images/train2017"), 8, images=4, img_size=160,
                            batch_size=4, progress=False)
    net = IntegerNetwork(qm, cal)
    coco = load_coco(coco_root, limit=1)
    image_id = coco.image_ids[0]
    image = load_letterboxed(coco.paths[image_id], image_id, 160, 32)
    x = torch.from_numpy(image.array)[None].float() / 255.0
    counts = _check_every_tensor(net, x)
    assert counts == {"conv": 57, "head": 3, "add": 7, "concat": 13, "pool": 3, "upsample": 2}
    with torch.no_grad():
        got, ref = net(x), qm.model(x)
    # the integer network finds what the fake-quant one finds: the same most confident boxes' classes
    top = ref[0, :, 4].topk(5).indices
    assert torch.equal((got[0, top, 5:] * got[0, top, 4:5]).argmax(1), (ref[0, top, 5:] * ref[0, top, 4:5]).argmax(1))


@pytest.mark.slow  # quantizes and calibrates a generated model
def test_layers_left_in_fp16_run_as_float_islands_between_codes():
    from sw.quant.model import QuantSpec

    qm, net = _network(_small("yolov5n", 0.125), QuantSpec("affine", 4, "channel", include_detect=False))
    islands = [n for n, layer in net.layers.items() if layer.float_island]
    assert set(islands) == {n for n, r in qm.layers.items() if r.qt is None} and len(islands) > 3
    x = _image(6)
    env = net.tensors(x)
    conv = next(n for n in islands if not net.layers[n].is_head)
    node = net.graph.convs[conv]
    assert env[node.dst].dtype == torch.int64  # an island's output is codes again
    expected = net.quant[node.dst].quantize(node.act(node.pre_float(net.quant[node.src].dequantize(env[node.src])
                                                                    .float())))
    assert torch.equal(env[node.dst], expected.to(torch.int64))
    assert not set(islands) & set(net.trace(x))
    with pytest.raises(QuantizationError, match="left in FP16"):
        net.trace(x, [conv])
    assert net(x).shape == qm.model(x).shape
