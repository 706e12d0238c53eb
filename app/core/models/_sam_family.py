"""One adapter for every SAM-family network (image encoder + prompt encoder + mask decoder).

SAM ViT-B/L/H, MedSAM, MobileSAM and LiteMedSAM all expose ``image_encoder``,
``prompt_encoder`` and ``mask_decoder`` with segment-anything's signatures; they differ in
their :class:`~app.core.models._preprocess.Preprocessing` and :class:`Capabilities`.
"""

from __future__ import annotations

import contextlib
import hashlib

import numpy as np

from app.core.image import Image2D
from app.core.models._preprocess import Preprocessing
from app.core.models.base import (
    Candidates,
    Capabilities,
    Embedding,
    Prompt,
    PromptNotSupportedError,
)

__all__ = ["SamFamilyModel", "image_key"]


def image_key(image: Image2D) -> str:
    """SHA-256 of what the model would see of ``image``: pixels, dtype, shape and window."""
    digest = hashlib.sha256()
    pixels = np.ascontiguousarray(image.pixels)
    digest.update(f"{pixels.dtype.str}|{pixels.shape}|".encode())
    w = image.window
    digest.update(f"{w.center!r}|{w.width!r}|".encode())
    digest.update(memoryview(pixels).cast("B"))
    return digest.hexdigest()


class SamFamilyModel:
    """A SAM-family network behind the :class:`~app.core.models.base.PromptableModel` protocol.

    Parameters
    ----------
    net : torch.nn.Module
        Has ``image_encoder``, ``prompt_encoder`` and ``mask_decoder`` (segment-anything API).
    name : str
        Registry name, e.g. ``"litemedsam"``.
    preprocessing : Preprocessing
    capabilities : Capabilities
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    precision : {"fp32", "fp16", "bf16"}
        Autocast dtype for the networks; half precision is honoured only on CUDA.

    Notes
    -----
    Not thread-safe: call it from one thread at a time (the GUI uses one worker thread).
    """

    def __init__(self, net, *, name: str, preprocessing: Preprocessing,
                 capabilities: Capabilities, device: str = "cpu", precision: str = "fp32",
                 checkpoint_path: str | None = None) -> None:
        self.net = net.eval().to(device)
        self.name = name
        self.preprocessing = preprocessing
        self.capabilities = capabilities
        self.device = str(device)
        self.precision = precision if self.device.startswith("cuda") else "fp32"
        self.checkpoint_path = checkpoint_path

    def __repr__(self) -> str:
        return f"SamFamilyModel({self.name!r}, device={self.device!r}, precision={self.precision!r})"

    def cache_token(self) -> str:
        """Identifies model + weights + preprocessing + precision for embedding-cache keys."""
        return (f"{self.name}|{self.checkpoint_path}|{self.preprocessing.cache_token()}|"
                f"{self.precision}|{self.backend}")

    def weights_digest(self, part: str = "encoder") -> str:
        """SHA-256 of the weights of ``part``: ``"encoder"`` (image encoder) or ``"decoder"``
        (prompt encoder + mask decoder), from the tensors in memory (so fine-tuned weights
        count). Recomputed only when a tensor was replaced or changed in place."""
        from app.core.models._onnx import module_digest, module_stamp

        mods = self._parts(part)
        stamp = module_stamp(mods)
        cache = self.__dict__.setdefault("_digests", {})
        if part not in cache or cache[part][0] != stamp:
            cache[part] = (stamp, module_digest(mods))
        return cache[part][1]

    def _parts(self, part: str):
        if part == "encoder":
            return (self.net.image_encoder,)
        if part == "decoder":
            return (self.net.prompt_encoder, self.net.mask_decoder)
        raise ValueError(f"part must be 'encoder' or 'decoder'; got {part!r}")

    def _autocast(self):
        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type="cuda", dtype=dtype)

    # --- protocol -------------------------------------------------------------------------
    def embed(self, image: Image2D, *, key: str = "") -> Embedding:
        """Run the image encoder.

        Parameters
        ----------
        image : Image2D
            (H, W) or (H, W, 3), any dtype; see :meth:`Preprocessing.prepare`.
        key : str
            Cache key to record in the embedding (the :class:`~app.core.engine.Engine` sets it).

        Returns
        -------
        Embedding
            ``features`` is float32 (1, 256, 64, 64): a tensor on the model's device with the
            torch backend, an ndarray with an exported graph.
        """
        array, resized_hw = self.preprocessing.prepare(image)
        features = self._encode(array)
        return Embedding(features=features, original_size=image.shape, input_size=resized_hw,
                         model_name=self.name, key=key)

    def predict(self, embedding: Embedding, prompt: Prompt, multimask: bool = True) -> Candidates:
        """Decode masks for one prompt.

        Parameters
        ----------
        embedding : Embedding
            From :meth:`embed` of this model.
        prompt : Prompt
            Points, at most one box and/or previous low-res logits, in original pixels.
        multimask : bool
            Ask for the three multimask outputs. For a model whose outputs cannot be ranked
            (``capabilities.meaningful_multimask`` False, e.g. LiteMedSAM, trained single-mask)
            the single trained output is returned instead, with ``meaningful=False``.

        Returns
        -------
        Candidates
            masks (K, H, W) bool at the original resolution, scores (K,), low-res logits
            (K, 256, 256); K = 3 for SAM multimask, else 1.
        """
        boxes = None if prompt.box_xyxy is None else prompt.box_xyxy[None]
        return self._decode(embedding, prompt, boxes, multimask)

    def predict_boxes(self, embedding: Embedding, boxes_xyxy: np.ndarray) -> Candidates:
        """Decode one single-mask prediction per box, in one batch.

        Parameters
        ----------
        boxes_xyxy : ndarray, shape (N, 4)
            Inclusive corners, original pixels.

        Returns
        -------
        Candidates
            K = N: mask ``i`` belongs to box ``i`` (``meaningful`` False: not alternatives).
        """
        boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            raise PromptNotSupportedError("no boxes given")
        for b in boxes:
            Prompt.from_box(b).validate_for(embedding.original_size)
        c = self._decode(embedding, Prompt(), boxes, multimask=False)
        return Candidates(c.masks, c.scores, c.low_res_logits, meaningful=False)

    def decode_points(self, embedding: Embedding, points_xy: np.ndarray,
                      multimask: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Decode N single-point positive prompts on one embedding (segment everything).

        The torch backend decodes them in one batch; an exported graph (batch 1) one by one.

        Parameters
        ----------
        embedding : Embedding
        points_xy : ndarray, shape (N, 2)
            ``(x, y)`` original pixels, one positive point per prompt.
        multimask : bool
            Three outputs per point when the model's are meaningful, else one.

        Returns
        -------
        low_res : ndarray of float32, shape (N, K, 256, 256)
        scores : ndarray of float32, shape (N, K)
            Predicted IoU.
        """
        if embedding.model_name != self.name:
            raise ValueError(
                f"embedding was computed by {embedding.model_name!r}, not by {self.name!r}")
        pts = np.asarray(points_xy, np.float32).reshape(-1, 2)
        if len(pts) == 0:
            raise PromptNotSupportedError("no points given")
        Prompt.from_points(pts).validate_for(embedding.original_size)
        coords = self.preprocessing.points_to_model(pts, embedding.original_size)
        multimask_out = bool(multimask and self.capabilities.meaningful_multimask)
        rt = getattr(self, "_runtime", None)
        if rt is not None:
            lows, ious = [], []
            for c in coords:
                out = rt.decode(self, embedding.features, c[None], np.ones(1, np.int64), None,
                                None, multimask_out)
                if out is None:  # the runtime fell back to torch
                    break
                lows.append(out[0])
                ious.append(out[1])
            else:
                return np.stack(lows), np.stack(ious)
        import torch

        dev = self.device
        features = embedding.features
        if not isinstance(features, torch.Tensor):
            features = torch.from_numpy(np.asarray(features, np.float32)).to(dev)
        # on the CPU a batch was slower per point than one point at a time (the decoder
        # repeats the embedding per prompt): 48 points 419 vs 184 ms each (bench/everything.py)
        step = 1 if dev == "cpu" else len(coords)
        lows, ious = [], []
        for i in range(0, len(coords), step):
            c = torch.from_numpy(np.ascontiguousarray(coords[i:i + step, None, :])).to(dev)
            lab = torch.ones((len(c), 1), dtype=torch.int64, device=dev)
            with torch.inference_mode(), self._autocast():
                sparse, dense = self.net.prompt_encoder(points=(c, lab), boxes=None, masks=None)
                low_res, iou = self.net.mask_decoder(
                    image_embeddings=features, image_pe=self._dense_pe(),
                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                    multimask_output=multimask_out)
            lows.append(low_res.float().cpu().numpy().astype(np.float32, copy=False))
            ious.append(iou.float().cpu().numpy().astype(np.float32, copy=False))
        return np.concatenate(lows), np.concatenate(ious)

    def logits_to_masks(self, embedding: Embedding, low_res: np.ndarray) -> np.ndarray:
        """Masks (M, H, W) bool at the original resolution from low-res logits (M, 256, 256)
        of this embedding (as :meth:`predict` makes them)."""
        return self.preprocessing.logits_to_masks(low_res, embedding.input_size,
                                                  embedding.original_size)

    # --- backends -------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """``"torch"``, or the name of the exported-graph runtime in use (``"onnx"``)."""
        rt = getattr(self, "_runtime", None)
        return "torch" if rt is None else rt.name

    def _encode(self, array: np.ndarray):
        """Image encoder on one prepared input (3, S, S) float32 -> features (1, 256, 64, 64)."""
        rt = getattr(self, "_runtime", None)
        if rt is not None:
            return rt.encode(self, array[None])
        import torch

        x = torch.from_numpy(array)[None].to(self.device)
        with torch.inference_mode(), self._autocast():
            return self.net.image_encoder(x).float()

    def _decode_net(self, features, coords: np.ndarray | None, labels: np.ndarray | None,
                    boxes: np.ndarray | None, mask: np.ndarray | None, multimask: bool):
        """Prompt encoder + mask decoder in model-input coordinates.

        Parameters
        ----------
        features : the embedding's features (torch tensor or ndarray (1, 256, 64, 64))
        coords : ndarray of float32, shape (P, 2), or None
        labels : ndarray of int, shape (P,), or None
        boxes : ndarray of float32, shape (N, 4), or None
            One prediction per box (the points and mask go with every box).
        mask : ndarray of float32, shape (256, 256), or None

        Returns
        -------
        low_res : ndarray of float32, shape (N * K, 256, 256)
        scores : ndarray of float32, shape (N * K,)
        """
        rt = getattr(self, "_runtime", None)
        if rt is not None:
            out = rt.decode(self, features, coords, labels, boxes, mask, multimask)
            if out is not None:
                return out
        return self._decode_torch(features, coords, labels, boxes, mask, multimask)

    def decoder_outputs(self, features, coords: np.ndarray | None, labels: np.ndarray | None,
                        boxes: np.ndarray | None, mask: np.ndarray | None):
        """All four outputs of prompt encoder + mask decoder, as torch tensors: the one torch
        path that inference (:meth:`_decode_torch`) and fine-tuning (``finetune._Trainer``)
        share. No ``inference_mode`` here: a caller that trains gets gradients.

        Parameters
        ----------
        features : torch tensor or ndarray (1, 256, 64, 64)
        coords, labels, boxes, mask
            As :meth:`_decode_net` (model-input coordinates; :meth:`model_prompt`).

        Returns
        -------
        low_res : tensor (N, 4, 256, 256)
            Output 0 is the single-mask head, 1..3 the multimask heads (segment-anything's
            ``MaskDecoder.forward`` takes ``[:, 0:1]`` or ``[:, 1:]``).
        iou : tensor (N, 4)
        """
        from app.core.models._decoder_graphs import decoder_outputs

        return decoder_outputs(self.net, features, coords, labels, boxes, mask,
                               device=self.device, image_pe=self._dense_pe())

    def _decode_torch(self, features, coords, labels, boxes, mask, multimask):
        import torch

        with torch.inference_mode(), self._autocast():
            low_res, iou = self.decoder_outputs(features, coords, labels, boxes, mask)
            sl = slice(1, None) if multimask else slice(0, 1)
            # (n, k, 256, 256) -> (n*k, 256, 256): one box per row, or k alternatives for one
            low_res = low_res[:, sl].float().reshape(-1, *low_res.shape[-2:])
            scores = iou[:, sl].float().reshape(-1)
        return (low_res.cpu().numpy().astype(np.float32, copy=False),
                scores.cpu().numpy().astype(np.float32, copy=False))

    # --- decoding -------------------------------------------------------------------------
    def _dense_pe(self):
        # the positional encoding of the embedding grid depends only on the weights: compute
        # it once per weights version (fine-tuning replaces the tensors it is built from)
        pe_layer = self.net.prompt_encoder.pe_layer
        stamp = (id(pe_layer.positional_encoding_gaussian_matrix),
                 pe_layer.positional_encoding_gaussian_matrix._version)
        if getattr(self, "_pe_stamp", None) != stamp:
            self._pe = self.net.prompt_encoder.get_dense_pe()
            self._pe_stamp = stamp
        return self._pe

    def model_prompt(self, prompt: Prompt, boxes: np.ndarray | None, hw: tuple[int, int]):
        """``prompt`` (and ``boxes`` (N, 4), original pixels) in model-input coordinates:
        ``(coords (P, 2) | None, labels (P,) | None, boxes (N, 4) | None, mask (256, 256) |
        None)``, as :meth:`_decode_net` and :meth:`decoder_outputs` take them."""
        pre = self.preprocessing
        coords = labels = None
        if prompt.has_points:
            coords = pre.points_to_model(prompt.points_xy, hw)
            labels = prompt.point_labels
        box_m = None if boxes is None else pre.boxes_to_model(boxes, hw)
        mask = None
        if prompt.mask_logits is not None:
            mask = np.ascontiguousarray(prompt.mask_logits, np.float32)
            if mask.shape != (256, 256):
                raise ValueError(f"mask_logits must have shape (256, 256); got {mask.shape}")
        return coords, labels, box_m, mask

    def _decode(self, embedding: Embedding, prompt: Prompt, boxes: np.ndarray | None,
                multimask: bool) -> Candidates:
        if embedding.model_name != self.name:
            raise ValueError(
                f"embedding was computed by {embedding.model_name!r}, not by {self.name!r}")
        if prompt.is_empty and boxes is None:
            raise PromptNotSupportedError("a prompt needs at least one point, a box or a mask")
        prompt.validate_for(embedding.original_size)
        hw = embedding.original_size
        pre = self.preprocessing
        coords, labels, box_m, mask = self.model_prompt(prompt, boxes, hw)
        multimask_out = bool(multimask and self.capabilities.meaningful_multimask)
        low_res, scores = self._decode_net(embedding.features, coords, labels, box_m, mask,
                                           multimask_out)
        # only the pixels whose bilinear support holds a positive logit are upsampled
        masks = pre.logits_to_masks(low_res, embedding.input_size, hw)
        return Candidates(
            masks=masks,
            scores=scores,
            low_res_logits=low_res,
            meaningful=self.capabilities.meaningful_multimask,
        )
