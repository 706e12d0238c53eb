"""The model registry: names, statuses, and loading through it."""

from __future__ import annotations

import pytest
import torch

from app.core.errors import CheckpointMissingError, SamScopeError
from app.core.models.registry import (
    DEFAULT_MODEL,
    get_spec,
    list_models,
    load_model,
    model_status,
)


def test_names_and_default():
    names = [s.name for s in list_models()]
    assert names[0] == DEFAULT_MODEL == "litemedsam"
    assert set(names) == {"litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam_vit_b",
                          "mobilesam_vit_t", "litemedsam_points"}
    with pytest.raises(ValueError, match="unknown model 'vit_x'.*litemedsam"):
        get_spec("vit_x")


def test_preprocessing_per_family():
    assert get_spec("litemedsam").preprocessing.input_size == 256
    for name in ("sam_vit_b", "sam_vit_l", "sam_vit_h", "mobilesam_vit_t"):
        pre = get_spec(name).preprocessing
        assert (pre.input_size, pre.keep_aspect, pre.normalise) == (1024, True, "sam_mean_std")
    pre = get_spec("medsam_vit_b").preprocessing
    assert (pre.input_size, pre.keep_aspect, pre.normalise) == (1024, False, "minmax")


def test_status_follows_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMSCOPE_CACHE_DIR", str(tmp_path))
    assert model_status("litemedsam") == "bundled"
    assert model_status("medsam_vit_b") == "not downloaded"
    (tmp_path / "medsam_vit_b.pth").write_bytes(b"")
    assert model_status("medsam_vit_b") == "cached"


def test_offline_load_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMSCOPE_CACHE_DIR", str(tmp_path))
    with pytest.raises(CheckpointMissingError, match="sam_vit_h_4b8939.pth"):
        load_model("sam_vit_h", device="cpu")


def test_mobilesam_without_its_package_says_so(tmp_path):
    pytest.importorskip("torch")
    try:
        import mobile_sam  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        pytest.skip("mobile_sam is installed here")
    ck = tmp_path / "mobile_sam.pt"
    torch.save({"w": torch.zeros(1)}, ck)
    with pytest.raises(SamScopeError, match="mobile_sam"):
        load_model("mobilesam_vit_t", checkpoint=ck, device="cpu")


def test_litemedsam_from_a_wrapped_user_checkpoint(tmp_path, litemedsam):
    # a training script's {"state_dict": ...} save of LiteMedSAM loads through --checkpoint
    ck = tmp_path / "mine.pth"
    torch.save({"state_dict": litemedsam.net.state_dict(), "epoch": 1}, ck)
    model = load_model("litemedsam", checkpoint=ck, device="cpu", precision="fp16")
    assert model.precision == "fp32"  # half precision only on GPUs
    assert model.checkpoint_path == str(ck)
    a = dict(model.net.state_dict())
    for k, v in litemedsam.net.state_dict().items():
        torch.testing.assert_close(a[k], v)
    with pytest.raises(ValueError, match="precision"):
        load_model("litemedsam", device="cpu", precision="fp8")
