"""`drn export`: BatchNorm folded into plain convolutions, ONNX checked against PyTorch with onnxruntime."""
import copy

import numpy as np
import pytest
import torch

import drn
from drn.apps import cli
from drn.apps.export import export_onnx, fold_batchnorm
from drn.zoo.heads import classifier_weights
from margins import clear_top2
from tolerance import assert_within_torch_error

pytestmark = pytest.mark.unit

ort = pytest.importorskip("onnxruntime")


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model.eval()


@pytest.mark.parametrize("name", ["drn_a_18", "drn_c_26", "drn_d_22"])
def test_fold_batchnorm_leaves_no_bn_and_same_output(name):
    torch.manual_seed(0)
    model = _randomise_bn(drn.build(name, num_classes=11))
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the source is untouched
    x = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        assert_within_torch_error(folded(x), model(x), copy.deepcopy(model).double()(x.double()), what="logits")


def _ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.numpy()})


@pytest.mark.parametrize("task,num_classes", [("classify", 7), ("segment", 19), ("localize", 5)])
def test_onnx_matches_pytorch(tmp_path, task, num_classes):
    torch.manual_seed(1)
    model = _randomise_bn(drn.build("drn_d_22", task=task, num_classes=num_classes))
    path = tmp_path / f"{task}.onnx"
    export_onnx(model, path, task=task, size=(64, 80), threshold=0.2)
    x = torch.randn(3, 3, 64, 80)  # batch 3 through a graph traced at batch 1: the batch axis is dynamic
    got = _ort(path, x)
    exact_model = copy.deepcopy(model).double()
    with torch.no_grad():
        want = model(x, threshold=0.2) if task == "localize" else model(x)
        exact = exact_model(x.double(), threshold=0.2) if task == "localize" else exact_model(x.double())
        clear = None
        if task == "localize":  # labels must agree where the top-2 margin of the exact response maps is clear
            weight, bias = classifier_weights(exact_model)
            clear = clear_top2(torch.nn.functional.conv2d(exact_model.features(x.double()), weight, bias), 1e-3)
    want, exact = ((want,), (exact,)) if task == "classify" else (tuple(want), tuple(exact))
    assert len(got) == len(want)
    for i, (g, w, e) in enumerate(zip(got, want, exact)):
        assert g.shape == tuple(w.shape)
        if w.dtype == torch.int64:
            np.testing.assert_array_equal(g[clear.numpy()], e[clear].numpy())
        elif task == "localize" and i == 3:  # boxes: decided by labels and scores, equal when those are clear
            if clear.all():
                np.testing.assert_allclose(g, e.numpy(), rtol=0, atol=1e-3)
        else:
            assert_within_torch_error(torch.from_numpy(g), w, e, mask=clear if i == 2 else None,
                                      relative=not (task == "localize" and i == 2), what=f"output {i}")


def test_cli_export(tmp_path, capsys):
    torch.manual_seed(2)
    model = _randomise_bn(drn.build("drn_d_22", task="segment", num_classes=3))
    torch.save(model.state_dict(), tmp_path / "w.pth")
    out = tmp_path / "seg.onnx"
    assert cli.main(["export", "--model", "drn_d_22", "--weights", str(tmp_path / "w.pth"), "--onnx", str(out),
                     "--task", "segment", "--size", "48", "56"]) == 0
    assert "wrote" in capsys.readouterr().out
    x = torch.randn(1, 3, 48, 56)
    log_probs, _ = _ort(out, x)
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(x.double())[0]
        assert_within_torch_error(torch.from_numpy(log_probs), model(x)[0], exact, what="log-probabilities")


def test_fused_model_is_refused(tmp_path):
    pytest.importorskip("drn.fused")
    fused = drn.build("drn_d_22", num_classes=3, fused=True, backend="reference")
    with pytest.raises(ValueError, match="unfused"):
        export_onnx(fused, tmp_path / "x.onnx", size=(32, 32))
