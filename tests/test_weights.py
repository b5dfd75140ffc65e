"""drn.zoo.hub, drn.zoo.weights and `drn weights` (drn.apps.weights): the catalogue, importing a file into the
torch hub cache, the mirror setting, and the error when nothing works. Local files only: the hub folder is a
tmp_path, downloads are file:// URLs or a refused local port."""
import hashlib
import json

import pytest
import torch

import drn
from drn.apps import cli
from drn.zoo import hub, weights
from drn.zoo.registry import CITYSCAPES, PRETRAINED, Weights

pytestmark = pytest.mark.unit

REFUSED = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("DRN_WEIGHTS_MIRROR", raising=False)
    return tmp_path / "hub" / "checkpoints"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def released(tmp_path, monkeypatch):
    """A drn_d_22 classifier saved locally and registered as the released drn_d_22 weights (its real hash in
    the name, an official URL nobody answers). Returns (file, its sha256)."""
    torch.manual_seed(0)
    src = tmp_path / "some_download.pth"
    torch.save(drn.build("drn_d_22").state_dict(), src)
    digest = _sha(src)
    monkeypatch.setitem(PRETRAINED, "drn_d_22", Weights(f"{REFUSED}/drn/drn_d_22-{digest[:8]}.pth"))
    return src, digest


def test_list_names_every_checkpoint(hub_dir, capsys):
    assert cli.main(["weights", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    files = {r["file"] for r in records}
    assert {w.file for w in PRETRAINED.values()} | {w.file for w in CITYSCAPES.values()} == files
    assert {"drn_d_22_cityscapes.pth", "drn-d-105_ms_cityscapes.pth", "drn_c_26-ddedf421.pth"} <= files
    by_file = {r["file"]: r for r in records}
    assert by_file["drn_c_26-ddedf421.pth"]["sha256_prefix"] == "ddedf421"
    assert by_file["drn-d-105_ms_cityscapes.pth"]["sha256_prefix"] is None
    assert by_file["drn-d-105_ms_cityscapes.pth"]["task"] == "segment"
    assert not any(r["cached"] for r in records)
    assert cli.main(["weights"]) == 0
    table = capsys.readouterr().out
    assert "drn-d-105_ms_cityscapes.pth" in table and "unknown" in table


def test_import_by_hash_then_pretrained_loads_offline(hub_dir, released, capsys):
    src, digest = released
    assert cli.main(["weights", "import", str(src)]) == 0
    dest = hub_dir / f"drn_d_22-{digest[:8]}.pth"
    assert dest.is_file() and _sha(dest) == digest and digest in capsys.readouterr().out
    model = drn.build("drn_d_22", pretrained=True)  # from the cache: the official URL is never asked
    torch.testing.assert_close(model.state_dict()["fc.weight"], torch.load(src)["fc.weight"])
    assert cli.main(["weights", "--json"]) == 0
    assert {r["file"]: r["cached"] for r in json.loads(capsys.readouterr().out)}[dest.name]


def test_import_refuses_a_wrong_file(hub_dir, released, tmp_path):
    src, digest = released
    bad = tmp_path / f"drn_d_22-{digest[:8]}.pth"
    bad.write_bytes(src.read_bytes() + b"x")
    with pytest.raises(ValueError, match=digest[:8]):
        weights.import_file(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="none of the released"):
        weights.import_file(junk)
    assert not hub_dir.exists() or not any(hub_dir.iterdir())


def test_import_cityscapes_by_name_and_strict_load(hub_dir, tmp_path):
    """No hash was published for the Cityscapes checkpoints: a file of that name must load strictly into the
    reference's DRNSeg layout (base.*, seg.*, up.weight) for 19 classes."""
    seg = tmp_path / "drn_d_22_cityscapes.pth"
    torch.save(drn.build("drn_d_22", task="segment", num_classes=19).state_dict(), seg)
    entry, dest, _ = weights.import_file(seg)
    assert entry.task == "segment" and dest == hub_dir / "drn_d_22_cityscapes.pth"
    model = drn.build("drn_d_22", task="segment", num_classes=19, pretrained=str(dest))
    assert model.seg.weight.shape[0] == 19
    wrong = tmp_path / "other" / "drn_d_22_cityscapes.pth"
    wrong.parent.mkdir()
    sd = drn.build("drn_d_22", task="segment", num_classes=5).state_dict()
    sd.pop("up.weight")  # without it only the class count differs: load_checkpoint alone would warn and go on
    torch.save(sd, wrong)
    with pytest.raises(ValueError, match="does not load into drn_d_22"):
        weights.import_file(wrong)
    torch.save(drn.build("drn_d_22").state_dict(), wrong)  # an ImageNet classifier under the Cityscapes name
    with pytest.raises(ValueError, match="does not load into drn_d_22"):
        weights.import_file(wrong)


def test_mirror_is_tried_first(hub_dir, released, tmp_path, monkeypatch):
    src, digest = released
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / f"drn_d_22-{digest[:8]}.pth").write_bytes(src.read_bytes())
    monkeypatch.setenv("DRN_WEIGHTS_MIRROR", f"file://{mirror}/")
    entry = hub.find("drn_d_22")
    assert hub.urls(entry)[0] == f"file://{mirror}/drn_d_22-{digest[:8]}.pth"
    sd = hub.state_dict(entry, progress=False)
    torch.testing.assert_close(sd["fc.weight"], torch.load(src)["fc.weight"])
    assert _sha(hub_dir / f"drn_d_22-{digest[:8]}.pth") == digest


def test_nothing_works_names_file_and_hash(hub_dir, released, tmp_path, monkeypatch):
    _, digest = released
    monkeypatch.setenv("DRN_WEIGHTS_MIRROR", f"file://{tmp_path}/empty")
    with pytest.raises(FileNotFoundError) as err:
        hub.state_dict(hub.find("drn_d_22"), progress=False)
    msg = str(err.value)
    assert f"drn_d_22-{digest[:8]}.pth" in msg and f"sha256 starting with {digest[:8]}" in msg
    assert f"file://{tmp_path}/empty" in msg and REFUSED in msg and "drn weights import" in msg
    with pytest.raises(FileNotFoundError, match="drn-d-105_ms_cityscapes.pth .no hash was published"):
        monkeypatch.delenv("DRN_WEIGHTS_MIRROR")
        hub.state_dict(hub.find("drn_d_105", task="segment"), progress=False)


def test_mirror_setting_is_validated(monkeypatch):
    monkeypatch.setenv("DRN_WEIGHTS_MIRROR", "ftp.example.org/drn")
    with pytest.raises(ValueError, match="DRN_WEIGHTS_MIRROR"):
        hub.urls(hub.find("drn_c_26"))
