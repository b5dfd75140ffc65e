"""`drn export`: BatchNorm folded into plain convolutions, ONNX checked against PyTorch with onnxruntime."""
import numpy as np
import pytest
import torch

import drn
from drn import cli
from drn.export import export_onnx, fold_batchnorm

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
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


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
    with torch.no_grad():
        want = model(x, threshold=0.2) if task == "localize" else model(x)
    want = (want,) if task == "classify" else tuple(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape)
        if w.dtype == torch.int64:
            np.testing.assert_array_equal(g, w.numpy())
        else:
            np.testing.assert_allclose(g, w.numpy(), atol=2e-4, rtol=1e-4)


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
        np.testing.assert_allclose(log_probs, model(x)[0].numpy(), atol=2e-4, rtol=1e-4)


def test_fused_model_is_refused(tmp_path):
    pytest.importorskip("drn.fused")
    fused = drn.build("drn_d_22", num_classes=3, fused=True, backend="reference")
    with pytest.raises(ValueError, match="unfused"):
        export_onnx(fused, tmp_path / "x.onnx", size=(32, 32))
