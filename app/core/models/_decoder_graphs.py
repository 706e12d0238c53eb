"""The prompt encoder + mask decoder split in two for export: a per-image part and a per-click part.

segment-anything's ``MaskDecoder`` runs, for every prompt, work that depends only on the image
embedding: the dense prompt (``no_mask_embed`` without a mask input) added to it, and, in the
first transformer layer, the key and value projections of the tokens-to-image attention and
the query projection of the image-to-tokens attention (about 400 M of its 1.75 G
multiply-adds). :class:`PrepareImage` computes those once per embedding (and mask input);
:class:`DecodeClick` takes them with the prompt's points and returns all four outputs.

:class:`DecodeClick` also lays out the output upscaling as matrix products on channels-last
pixels: a 2 x 2 stride-2 transposed convolution maps each input pixel to its own 2 x 2 block,
so it is one ``(pixels, C_in) @ (C_in, 4 C_out)`` product, and the channel LayerNorm becomes a
plain last-axis ``layer_norm``; the only transpose left is one of the four low-res masks at the
end. The arithmetic is the same as ``MaskDecoder.predict_masks`` (:func:`decoder_outputs`, the
unsplit path, is the reference: ``tests/core/models/test_backends.py`` compares them on real
images, and the export refuses a graph that differs).

On two CPU cores with ONNX Runtime (``bench/engine.py``) the per-click graph runs in about a
third of the time of the whole decoder exported as one graph.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["PREPARED", "PrepareImage", "DecodeClick", "decoder_outputs", "prompt_tokens"]

#: names of :class:`PrepareImage`'s outputs, in order (and of :class:`DecodeClick`'s first inputs)
PREPARED = ("keys", "t2i_k", "t2i_v", "i2t_q")


def decoder_outputs(net, features, coords, labels, boxes, mask, *, device: str = "cpu",
                    image_pe=None):
    """segment-anything's own prompt encoder + ``MaskDecoder.predict_masks`` on ``net``: all
    four outputs, (N, 4, 256, 256) logits and (N, 4) predicted IoU, one row per box (the
    points and mask go with every box). Arrays in model-input pixels, any of them ``None``.
    The torch path of inference and of fine-tuning, and what the split graphs must reproduce."""
    import torch

    if not isinstance(features, torch.Tensor):
        features = torch.from_numpy(np.asarray(features, np.float32)).to(device)
    n = 1 if boxes is None else len(boxes)
    points = None
    if coords is not None:
        c = torch.from_numpy(np.asarray(coords, np.float32).reshape(-1, 2)).to(device)
        lab = torch.from_numpy(np.asarray(labels).astype(np.int64).reshape(-1)).to(device)
        points = (c[None].expand(n, -1, -1), lab[None].expand(n, -1))
    box_t = None if boxes is None else torch.from_numpy(
        np.asarray(boxes, np.float32).reshape(-1, 4)).to(device)
    mask_t = None
    if mask is not None:
        mask_t = torch.from_numpy(np.asarray(mask, np.float32).reshape(256, 256))
        mask_t = mask_t[None, None].to(device).expand(n, -1, -1, -1)
    sparse, dense = net.prompt_encoder(points=points, boxes=box_t, masks=mask_t)
    return net.mask_decoder.predict_masks(
        image_embeddings=features,
        image_pe=net.prompt_encoder.get_dense_pe() if image_pe is None else image_pe,
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)


def _heads(x, n: int):
    """(1, N, C) -> (1, n, N, C / n), as ``Attention._separate_heads``."""
    b, tokens, c = x.shape
    return x.reshape(b, tokens, n, c // n).transpose(1, 2)


def prompt_tokens(prompt_encoder, point_coords, point_labels, size_wh):
    """Sparse prompt embeddings of points in model-input pixels, as ``PromptEncoder._embed_points``
    (labels: 1 object, 0 background, 2 / 3 box corners, -1 padding)."""
    emb = prompt_encoder.pe_layer._pe_encoding((point_coords + 0.5) / size_wh)
    lab = point_labels.unsqueeze(-1)
    emb = emb * (lab != -1).to(emb.dtype)
    emb = emb + prompt_encoder.not_a_point_embed.weight * (lab == -1).to(emb.dtype)
    for i in range(prompt_encoder.num_point_embeddings):
        emb = emb + prompt_encoder.point_embeddings[i].weight * (lab == i).to(emb.dtype)
    return emb


def _flat_pe(net):
    """The embedding grid's positional encoding, (1, 64 * 64, 256) channels-last."""
    return net.prompt_encoder.get_dense_pe().detach().clone().flatten(2).transpose(1, 2)


class PrepareImage:
    """Factory of the per-embedding module (a class so that ``torch`` is imported lazily)."""

    def __new__(cls, net):
        import torch

        class _PrepareImage(torch.nn.Module):
            """image_embeddings (1, 256, 64, 64), mask_input (1, 1, 256, 256),
            has_mask_input (1,) -> keys (1, 4096, 256), t2i_k (1, h, c, 4096),
            t2i_v (1, h, 4096, c), i2t_q (1, h, 4096, c) (scaled by 1 / sqrt(c))."""

            def __init__(self, net) -> None:
                super().__init__()
                self.pe = net.prompt_encoder
                self.layer = net.mask_decoder.transformer.layers[0]
                self.register_buffer("image_pe", _flat_pe(net))

            def forward(self, image_embeddings, mask_input, has_mask_input):
                pe = self.pe
                no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
                dense = (has_mask_input * pe.mask_downscaling(mask_input)
                         + (1 - has_mask_input) * no_mask)
                keys = (image_embeddings + dense).flatten(2).transpose(1, 2)
                keys_pe = keys + self.image_pe
                t2i = self.layer.cross_attn_token_to_image
                i2t = self.layer.cross_attn_image_to_token
                k = _heads(t2i.k_proj(keys_pe), t2i.num_heads).transpose(2, 3)
                v = _heads(t2i.v_proj(keys), t2i.num_heads)
                scale = 1.0 / math.sqrt(i2t.internal_dim // i2t.num_heads)
                q = _heads(i2t.q_proj(keys_pe), i2t.num_heads) * scale
                return keys, k, v, q

        return _PrepareImage(net).eval()


class DecodeClick:
    """Factory of the per-prompt module (see the module docstring)."""

    def __new__(cls, net):
        import torch
        import torch.nn.functional as F

        class _DecodeClick(torch.nn.Module):
            """keys, t2i_k, t2i_v, i2t_q (from the per-image part), point_coords (1, P, 2),
            point_labels (1, P) -> low-res logits (1, 4, 256, 256), predicted IoU (1, 4)."""

            def __init__(self, net) -> None:
                super().__init__()
                self.pe = net.prompt_encoder
                self.md = net.mask_decoder
                self.register_buffer("image_pe", _flat_pe(net))
                h, w = net.prompt_encoder.input_image_size
                self.register_buffer("size_wh", torch.tensor([float(w), float(h)]))
                up = self.md.output_upscaling
                conv1, self.norm, conv2 = up[0], up[1], up[3]
                for conv in (conv1, conv2):
                    if tuple(conv.kernel_size) != (2, 2) or tuple(conv.stride) != (2, 2):
                        raise ValueError("output upscaling is not 2 x 2 stride-2 convolutions")
                # ConvTranspose2d weight (C_in, C_out, 2, 2) -> (C_in, [a, b, C_out])
                for i, conv in ((1, conv1), (2, conv2)):
                    self.register_buffer(f"w{i}", conv.weight.detach().permute(0, 2, 3, 1)
                                         .reshape(conv.in_channels, -1).clone())
                    self.register_buffer(f"b{i}", conv.bias.detach().repeat(4).clone())
                self.c1, self.c2 = conv1.out_channels, conv2.out_channels
                self.grid = tuple(int(v) for v in net.prompt_encoder.image_embedding_size)

            def forward(self, keys, t2i_k, t2i_v, i2t_q, point_coords, point_labels):
                md = self.md
                tr = md.transformer
                sparse = prompt_tokens(self.pe, point_coords, point_labels, self.size_wh)
                out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], 0)
                tokens = torch.cat((out_tokens.unsqueeze(0), sparse), 1)

                # first layer, with the image-side projections given
                layer = tr.layers[0]
                if layer.skip_first_layer_pe:
                    queries = layer.self_attn(q=tokens, k=tokens, v=tokens)
                else:
                    q = tokens + tokens
                    queries = tokens + layer.self_attn(q=q, k=q, v=tokens)
                queries = layer.norm1(queries)
                att = layer.cross_attn_token_to_image
                q = _heads(att.q_proj(queries + tokens), att.num_heads)
                scale = 1.0 / math.sqrt(att.internal_dim // att.num_heads)
                w = torch.softmax((q @ t2i_k) * scale, dim=-1)
                out = (w @ t2i_v).transpose(1, 2).reshape(1, -1, att.internal_dim)
                queries = layer.norm2(queries + att.out_proj(out))
                queries = layer.norm3(queries + layer.mlp(queries))
                att = layer.cross_attn_image_to_token
                k = _heads(att.k_proj(queries + tokens), att.num_heads)
                v = _heads(att.v_proj(queries), att.num_heads)
                w = torch.softmax(i2t_q @ k.transpose(2, 3), dim=-1)
                out = (w @ v).transpose(1, 2).reshape(1, -1, att.internal_dim)
                keys = layer.norm4(keys + att.out_proj(out))

                for layer in tr.layers[1:]:
                    queries, keys = layer(queries=queries, keys=keys, query_pe=tokens,
                                          key_pe=self.image_pe)
                attn = tr.final_attn_token_to_image(q=queries + tokens, k=keys + self.image_pe,
                                                    v=keys)
                queries = tr.norm_final_attn(queries + attn)

                iou = md.iou_prediction_head(queries[:, 0, :])
                mask_tokens = queries[:, 1:1 + md.num_mask_tokens, :]
                hyper = torch.stack([md.output_hypernetworks_mlps[i](mask_tokens[:, i, :])
                                     for i in range(md.num_mask_tokens)], dim=1)[0]  # (K, 32)

                # upscaling on channels-last pixels: (4096, 256) -> (4096, [a, b], 64) ->
                # (4096, [a, b], [c, d], 32); the pixel (4i + 2a + c, 4j + 2b + d)
                x = (keys[0] @ self.w1 + self.b1).reshape(-1, 4, self.c1)
                x = F.gelu(F.layer_norm(x, (self.c1,), self.norm.weight, self.norm.bias,
                                        self.norm.eps))
                x = F.gelu((x @ self.w2 + self.b2).reshape(-1, 4, 4, self.c2))
                m = x @ hyper.transpose(0, 1)  # (4096, 4, 4, K)
                n, (gh, gw) = m.shape[-1], self.grid
                m = m.reshape(gh, gw, 2, 2, 2, 2, n).permute(6, 0, 2, 4, 1, 3, 5)
                return m.reshape(1, n, 4 * gh, 4 * gw), iou

        return _DecodeClick(net).eval()
