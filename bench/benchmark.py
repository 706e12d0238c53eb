"""The same benchmark workload run the naive way and SAMScope's way, side by side.

Naive: the image is embedded again for every prompt call (what the published evaluation
scripts amount to when each prompt configuration is a separate ``set_image`` + ``predict``).
SAMScope: :func:`app.core.benchmark.runner.iter_benchmark`, where each image is embedded once
per model and reused by every mode, click and selection.

Both runs go through the same runner, prompts and metrics, so the results must be identical;
the script checks that and prints wall time, prompt calls per second and the speed-up.

    python bench/benchmark.py                     # LiteMedSAM on CPU, 2 US + 2 CXR images
    python bench/benchmark.py --cases 4 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.core.methods.base import InteractiveMethod  # noqa: E402


class NaiveMethod(InteractiveMethod):
    """Embeds the image again for every prediction (no cache, no reuse)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.name = model.name
        self.capabilities = model.capabilities
        self.embeddings = 0

    def prepare(self, image):
        self.images_prepared += 1
        return image

    def predict(self, state, prompt, multimask=True):
        self.embeddings += 1
        return self.model.predict(self.model.embed(state), prompt, multimask=multimask)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "png_pairs"))
    ap.add_argument("--model", default="litemedsam")
    ap.add_argument("--device", default=None)
    ap.add_argument("--cases", type=int, default=2, help="cases per dataset")
    ap.add_argument("--clicks", type=int, default=3)
    args = ap.parse_args()

    import pandas as pd

    from app.core.benchmark.results import load_results
    from app.core.benchmark.runner import BenchmarkPlan, run_benchmark
    from app.core.engine import Engine
    from app.core.methods.sam_family import SamFamilyMethod
    from app.core.models.registry import load_model

    model = load_model(args.model, device=args.device)
    print(f"model {args.model} on {getattr(model, 'device', '?')}; data {args.data}; "
          f"{args.cases} cases per dataset; modes 1-5 + paper protocol, {args.clicks} clicks")
    # warm-up (first call builds kernels / allocates)
    from app.core.benchmark.datasets import discover, iter_images

    first = discover(args.data).datasets[0]
    sample = next(iter(iter_images(first.cases[0], [t.label for t in first.tasks])))
    import numpy as np

    from app.core.prompts import mode_prompts

    warm = mode_prompts(next(iter(sample.masks.values())), 5, np.random.default_rng(0))
    model.predict(model.embed(sample.image), warm.prompts[0])

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for way in ("naive", "samscope"):
            if way == "naive":
                method = NaiveMethod(model)
            else:
                method = SamFamilyMethod(args.model, engine=Engine(model))
            plan = BenchmarkPlan(
                data=args.data, out_dir=Path(tmp) / way, methods=(args.model,),
                modes=(1, 2, 3, 4, 5), protocols=("paper",), clicks=args.clicks,
                max_cases=args.cases, seed=0, save_masks=False,
                prebuilt_methods={args.model: method},
            )
            t0 = time.perf_counter()
            run_benchmark(plan)
            wall = time.perf_counter() - t0
            df = load_results(plan.out_dir)
            calls = int(df.drop_duplicates(["dataset", "case", "protocol", "click"])[
                "n_calls"].sum())
            embeds = method.embeddings if way == "naive" else method.engine.stats.embeddings_computed
            results[way] = (wall, calls, embeds, df)
            print(f"{way:9s} {wall:8.1f} s  {calls} prompt calls  {embeds} embeddings  "
                  f"{calls / wall:6.2f} prompts/s")
    (tn, _, _, dn), (ts, _, _, ds) = results["naive"], results["samscope"]
    key = ["dataset", "case", "protocol", "click", "selection"]
    same = dn.sort_values(key)["iou"].to_numpy()
    same = np.array_equal(same, ds.sort_values(key)["iou"].to_numpy())
    print(f"speed-up {tn / ts:.2f}x  (identical IoUs: {same})")
    print(pd.Series({"images": ds["case"].nunique(), "rows": len(ds)}).to_string())
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
