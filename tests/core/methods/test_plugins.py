"""A method installed by another package through the ``samscope.methods`` entry point."""

from __future__ import annotations

import importlib
import sys
import textwrap

import numpy as np
import pytest

from app.core.image import Image2D
from app.core.methods import available_methods, create_method
from app.core.models.base import Prompt


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A real distribution on sys.path (dist-info with entry_points.txt) and its module."""
    (tmp_path / "thresh_plugin.py").write_text(textwrap.dedent('''
        import numpy as np
        from app.core.methods.base import InteractiveMethod
        from app.core.models.base import Candidates, Capabilities

        class ThresholdMethod(InteractiveMethod):
            name = "threshold"
            capabilities = Capabilities(points=False, boxes=True, mask_input=False,
                                        meaningful_multimask=False)

            def __init__(self, level=0.5, **options):
                super().__init__()
                self.level = level

            def predict(self, state, prompt, multimask=True):
                img = state.unit_range()
                x0, y0, x1, y1 = (int(v) for v in prompt.box_xyxy)
                mask = np.zeros(img.shape, bool)
                mask[y0:y1 + 1, x0:x1 + 1] = img[y0:y1 + 1, x0:x1 + 1] > self.level
                return Candidates(mask[None], np.array([np.nan], np.float32),
                                  np.zeros((1, 256, 256), np.float32), meaningful=False)
    '''))
    dist = tmp_path / "thresh_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thresh-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[samscope.methods]\nthreshold = thresh_plugin:ThresholdMethod\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield
    sys.modules.pop("thresh_plugin", None)


def test_entry_point_method_is_found_and_used(installed_plugin):
    assert "threshold" in available_methods()
    method = create_method("threshold", level=0.4)
    img = np.zeros((20, 30), np.uint8)
    img[5:10, 8:20] = 200
    state = method.prepare(Image2D.from_array(img))
    mask = method.predict(state, Prompt.from_box([0, 0, 29, 19])).masks[0]
    assert mask.sum() == 5 * 12 and mask[5:10, 8:20].all()
    assert not method.supports(Prompt.from_points([[3, 3]]))
