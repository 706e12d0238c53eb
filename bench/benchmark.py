"""The same benchmark workload run the naive way and SAMScope's way, side by side.

Naive: the image is embedded again for every prompt call (what the published evaluation
scripts amount to when each prompt configuration is a separate ``set_image`` + ``predict``).
SAMScope: :func:`app.core.benchmark.runner.iter_benchmark`, where each image is embedded once
per model and reused by every mode, click and selection.

Both runs go through the same runner, prompts and metrics, so the results must be identical;
the script checks that and prints wall time, prompt calls per second and the speed-up.
SAMScope's way is then run once per inference backend (``--backends torch,onnx,openvino,openvino+onnx``): prompts/s
for each, the ratio to the first, and how far the per-prompt IoUs moved (they must not).

    python bench/benchmark.py                     # LiteMedSAM on CPU, 2 US + 2 CXR images
    python bench/benchmark.py --cases 4 --device cuda --backends torch
    python bench/benchmark.py --no-naive          # only the backends
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
    ap.add_argument("--backends", default="torch,onnx,openvino,openvino+onnx",
                    help="comma-separated inference backends for SAMScope's way")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive run")
    args = ap.parse_args()

    import pandas as pd

    from app.core.benchmark.results import load_results
    from app.core.benchmark.runner import BenchmarkPlan, run_benchmark
    from app.core.engine import Engine
    from app.core.methods.sam_family import SamFamilyMethod
    from app.core.models.registry import load_model

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    models = {b: load_model(args.model, device=args.device, backend=b) for b in backends}
    model = models[backends[0]]
    print(f"model {args.model} on {getattr(model, 'device', '?')}; data {args.data}; "
          f"{args.cases} cases per dataset; modes 1-5 + paper protocol, {args.clicks} clicks; "
          f"backends {', '.join(backends)}")
    # warm-up (first call builds kernels / allocates; the onnx backend exports or finds graphs)
    from app.core.benchmark.datasets import discover, iter_images

    first = discover(args.data).datasets[0]
    sample = next(iter(iter_images(first.cases[0], [t.label for t in first.tasks])))
    import numpy as np

    from app.core.prompts import mode_prompts

    warm = mode_prompts(next(iter(sample.masks.values())), 5, np.random.default_rng(0))
    for m in models.values():
        m.predict(m.embed(sample.image), warm.prompts[0])

    ways = ([] if args.no_naive else [("naive", backends[0])]) + [
        (f"samscope[{b}]", b) for b in backends]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for way, backend in ways:
            m = models[backend]
            if way == "naive":
                method = NaiveMethod(m)
            else:
                method = SamFamilyMethod(args.model, engine=Engine(m, store=False))
            plan = BenchmarkPlan(
                data=args.data, out_dir=Path(tmp) / way.replace("[", "_").strip("]"),
                methods=(args.model,),
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
            print(f"{way:16s} {wall:8.1f} s  {calls} prompt calls  {embeds} embeddings  "
                  f"{calls / wall:6.2f} prompts/s")
    key = ["dataset", "case", "protocol", "click", "selection"]
    ref_way = f"samscope[{backends[0]}]"
    ts, _, _, ds = results[ref_way]
    ok = True
    if "naive" in results:
        tn, _, _, dn = results["naive"]
        same = np.array_equal(dn.sort_values(key)["iou"].to_numpy(),
                              ds.sort_values(key)["iou"].to_numpy())
        ok &= bool(same)
        print(f"speed-up of caching {tn / ts:.2f}x  (identical IoUs: {same})")
    for b in backends[1:]:
        tb, calls, _, db = results[f"samscope[{b}]"]
        a = ds.sort_values(key)["iou"].to_numpy()
        c = db.sort_values(key)["iou"].to_numpy()
        moved = float(np.nanmax(np.abs(a - c))) if len(a) == len(c) else float("inf")
        mean_a, mean_c = float(np.nanmean(a)), float(np.nanmean(c))
        ok &= moved <= 0.01
        print(f"{b} vs {backends[0]}: prompts/s x{ts / tb:.2f}; mean IoU {mean_a:.4f} vs "
              f"{mean_c:.4f}, largest per-prompt IoU change {moved:.4f}")
    print(pd.Series({"images": ds["case"].nunique(), "rows": len(ds)}).to_string())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
