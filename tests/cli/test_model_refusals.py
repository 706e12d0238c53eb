"""Model files refused in one line, fast, without unsafe advice (issue 14, item 11)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from app.core.errors import CheckpointRefusedError


class Payload:
    """Stands for pickled code in an untrusted checkpoint."""

    def __init__(self):
        self.x = 1


def test_refusing_pickled_code_does_not_advise_weights_only_false(tmp_path):
    from app.core.models.checkpoints import load_state_dict

    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "obj": Payload()}, path)
    with pytest.raises(CheckpointRefusedError) as err:
        load_state_dict(path)
    msg = str(err.value)
    assert str(path) in msg and "refused" in msg
    assert "weights_only" not in msg and "False" not in msg and "\n" not in msg, msg
    assert "can still be loaded" not in msg and "trust" not in msg, msg


def test_a_finetuned_manifest_naming_its_own_folder_fails_fast(tmp_path):
    from app.core.models.checkpoints import sha256_file
    from app.core.models.finetuned import FORMAT, MANIFEST_NAME, load_finetuned

    folder = tmp_path / "loop"
    folder.mkdir()
    torch.save({"mask_decoder.x": torch.zeros(1)}, folder / "decoder.pt")
    (folder / MANIFEST_NAME).write_text(json.dumps({
        "format": FORMAT, "name": "loop", "base_model": str(folder),
        "weights_file": "decoder.pt", "weights_sha256": sha256_file(folder / "decoder.pt")}))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointRefusedError, match="leads back to this folder"):
        load_finetuned(folder, device="cpu")
    assert time.perf_counter() - t0 < 5
