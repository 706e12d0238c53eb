"""Compare click-model recipe variants on litemedsam_points' validation split, through the benchmark.

Usage::

    python bench/click_model_variants.py --split assets/models/litemedsam_points \\
        --model "v1=/tmp/prev::shipped before (old recipe)" --model "A=/tmp/A::new recipe" \\
        [--json variants.json]

Each model folder is scored by :func:`app.core.benchmark.evaluate.evaluate` (the runner's own
prompt simulation, selection and IoU) on the validation cases listed in ``--split``'s manifest,
or, for a cross-validated variant (``NAME=F0,F1,...::what``, the fold models of
``scripts/train_litemedsam_points.py --folds K --fold I``), each fold model on the validation
cases of its own manifest, their rows pooled (every case of the data scored once; compare it
with a ``base`` entry, which is then scored on the union of the folds' cases):
modes 1, 3 and 5, and the paper and standard iterative protocols for 9 clicks (target IoU 1,
so no run stops early), first and oracle candidates. Prints the mean over tasks with 95 %
case-bootstrap intervals, paired differences against the first model, and the seconds taken;
``--json`` writes the list the training script's ``--variants`` puts in the model card.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KEYS = ("mode1_first", "mode1_oracle", "mode3_first", "mode5_first", "paper1_first",
        "paper5_first", "paper9_first", "paper9_oracle", "standard1_first", "standard5_first",
        "standard9_first", "standard9_oracle")


def _script():
    spec = importlib.util.spec_from_file_location(
        "train_litemedsam_points", REPO / "scripts" / "train_litemedsam_points.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--split", type=Path, default=None,
                    help="a model folder whose manifest lists the validation cases (default: "
                    "each model's own, pooled over a variant's folds)")
    ap.add_argument("--model", action="append", required=True,
                    help="NAME=FOLDER::what changed (FOLDER 'base' = LiteMedSAM as bundled)")
    ap.add_argument("--max-slices", type=int, default=12)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import numpy as np

    from app.core.benchmark.evaluate import significantly_worse, summarize, task_differences
    from app.core.engine import Engine
    from app.core.finetune import benchmark_rows
    from app.core.models.finetuned import load_finetuned, read_manifest
    from app.core.models.registry import load_model

    t0 = time.perf_counter()
    train = _script()
    specs = []
    for spec in args.model:
        name, rest = spec.split("=", 1)
        folders, _, what = rest.partition("::")
        specs.append((name, folders.split(","), what))

    def cases_of(folder):
        return set(read_manifest(args.split or folder)["data"]["val_cases"])

    fold_cases = {f: cases_of(f) for _, fs, _ in specs for f in fs if f != "base"}
    all_cases = set().union(*fold_cases.values()) if fold_cases else set()
    samples = [s for s in train.collect(args.data, args.max_slices) if s.case in all_cases]
    base = load_model("litemedsam", device="cpu")
    engine = Engine(base, cache_bytes=1 << 40)
    embs = {id(s): engine.embed(s.image) for s in samples}
    print(f"{len(samples)} validation images ({len(all_cases)} cases) embedded in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    out, rows_all = [], []
    for name, folders, what in specs:
        folder = ",".join(folders)
        ts = time.perf_counter()
        rows = []
        for f in folders:
            model = base if f == "base" else load_finetuned(f, device="cpu")
            val = [s for s in samples if f == "base" or s.case in fold_cases[f]]
            rows += benchmark_rows({name: model}, val, [embs[id(s)] for s in val],
                                   modes=(1, 3, 5), protocols=("paper", "standard"),
                                   clicks=train.CLICKS, selections=("first", "oracle"),
                                   target_iou=1.0)
        rows_all += rows
        summ = {(s.protocol, s.selection, s.click): s for s in summarize(rows)
                if s.task == "mean of tasks"}
        scores = {}
        for key in KEYS:
            proto, sel = key.split("_")
            click = 0 if proto.startswith("mode") else int(proto.lstrip("apersdtn"))
            proto = proto if proto.startswith("mode") else proto.rstrip("0123456789")
            s = summ.get((proto, sel, click))
            if s is not None:
                scores[key] = s.mean
                scores[key + "_ci"] = [s.low, s.high]
        out.append({"name": name, "folder": folder, "what": what, "scores": scores,
                    "seconds": round(time.perf_counter() - ts, 1)})
        print(f"{name}: " + ", ".join(f"{k} {scores[k]:.3f} [{scores[k + '_ci'][0]:.3f}, "
                                      f"{scores[k + '_ci'][1]:.3f}]" for k in KEYS
                                      if k in scores) + f"  ({out[-1]['seconds']} s)",
              flush=True)
    ref = out[0]["name"]
    for v in out[1:]:
        for proto, click in (("mode1", 0), ("mode3", 0), ("mode5", 0), ("paper", 5),
                             ("paper", 9), ("standard", 5), ("standard", 9)):
            per = task_differences(rows_all, v["name"], ref, proto, "first", click)
            if per:
                diffs = {t: round(r["mean_diff"], 3) for t, r in per.items()}
                worse = significantly_worse(per)
                print(f"{v['name']} - {ref}, {proto} click {click}: mean of tasks "
                      f"{np.mean(list(diffs.values())):+.3f}; per task {diffs}; "
                      f"significantly worse: {worse or 'none'}")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
