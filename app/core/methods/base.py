"""The interface every interactive segmentation method implements.

A method takes the same prompts as a SAM-family model (:class:`app.core.models.base.Prompt`:
points ``(x, y)`` with labels, one inclusive box, optional previous low-res logits) and returns
:class:`app.core.models.base.Candidates`. The benchmark treats all methods alike:

.. code-block:: python

    method = create_method("random_walker")  # app.core.methods.registry
    state = method.prepare(image)            # once per image (SAM: the embedding, cached)
    cands = method.predict(state, prompt)    # any number of times per image

The registry of methods (classical ones, registry models, plug-ins) is
:mod:`app.core.methods.registry`: it imports the implementations, which import this module,
never the other way round.

Plug-ins
--------
Third-party methods (RITM, SimpleClick, FocalClick, your own model) register an entry point in
the group ``samscope.methods``; its object is a class or factory called with keyword options
(``device=...``) that returns an :class:`InteractiveMethod`::

    [project.entry-points."samscope.methods"]
    ritm = "my_package.ritm:RitmMethod"

Then ``samscope benchmark DATA --methods ritm,litemedsam`` uses it. A plug-in should set
``capabilities`` truthfully: the benchmark records ``prompt_supported=False`` for point-only
prompts given to a method whose ``capabilities.points`` is False, instead of hiding them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from app.core.image import Image2D
from app.core.models.base import Candidates, Capabilities, Prompt

__all__ = ["InteractiveMethod"]


class InteractiveMethod(ABC):
    """An interactive segmentation method: prepare an image once, then predict from prompts.

    Attributes
    ----------
    name : str
        Identifier used on the command line and in results (``"litemedsam"``).
    capabilities : Capabilities
        ``points``: gives useful masks from point-only prompts; ``boxes``; ``mask_input``:
        accepts ``Prompt.mask_logits`` fed back; ``meaningful_multimask``: its K > 1 outputs are
        distinct, rankable candidates (so ``oracle``/``best_score`` selection means something).
    note : str
        A caveat for reports (e.g. "trained on boxes only").
    """

    name: str = "method"
    capabilities: Capabilities = Capabilities()
    note: str = ""

    def __init__(self) -> None:
        self.images_prepared = 0

    def prepare(self, image: Image2D) -> Any:
        """Per-image work done once and reused for every prompt (SAM: the image embedding).

        Returns an opaque state passed back to :meth:`predict`. The default returns the image.
        """
        self.images_prepared += 1
        return image

    @abstractmethod
    def predict(self, state: Any, prompt: Prompt, multimask: bool = True) -> Candidates:
        """Masks for ``prompt`` on a prepared image.

        Returns
        -------
        Candidates
            ``masks`` (K, H, W) bool at the original image size; ``scores`` (K,) predicted IoU
            (NaN where the method has none); ``low_res_logits`` (K, 256, 256) float32.
        """

    def supports(self, prompt: Prompt) -> bool:
        """Whether this prompt type is one the method is meant for (not whether it runs)."""
        if prompt.has_box:
            return bool(self.capabilities.boxes)
        return bool(self.capabilities.points)

    def stats(self) -> dict[str, int]:
        """Counters for the run log: ``{"prepared": n, "computed": n, "reused": n}``."""
        return {"prepared": self.images_prepared, "computed": self.images_prepared, "reused": 0}

    def describe(self) -> dict[str, Any]:
        """What the run manifest records about this method (versions, checkpoint hashes, options)."""
        return {"name": self.name, "class": f"{type(self).__module__}.{type(self).__qualname__}"}
