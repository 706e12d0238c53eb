"""``samscope benchmark``: the paper's prompt modes, everything mode, COSMOS's prompt
strategies and click protocols on a dataset folder."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from app.core.models.backends import BACKENDS

__all__ = ["register", "run"]

_EPILOG = """\
examples:
  samscope benchmark ../shared/data/png_pairs --methods litemedsam,random_walker \\
      --modes 1,2,3,4,5 --out runs/pairs
  samscope benchmark ../shared/data/msd_like --modes 3,5 --protocol paper --clicks 5 \\
      --max-slices 4 --out runs/msd
  samscope benchmark ../shared/data --methods litemedsam_points --modes everything,1,3 \
      --grid 16,32 --protocols cosmos-centroid,cosmos-5pos5neg --jitter 0.1 --repeats 5 \
      --max-cases 2 --out runs/cosmos
  samscope benchmark DATA --out runs/pairs --resume        # continue an interrupted run
  samscope benchmark DATA --list                           # show detected datasets and tasks

Modes (Mazurowski et al. 2023): 1 point on the largest component; 2 a point on each of up to
3 components, one call; 3 box of the largest component; 4 a box per component (up to 3),
masks united; 5 box of the whole mask; everything: SAM's automatic mask generator on a
--grid of points per side, its masks matched to the ground truth (selections match_dice =
COSMOS's best Dice per object, match_iou, hungarian = one-to-one at IoU >= 0.5 with
precision/recall/F1). Protocols: paper (Algorithm 1) or standard (RITM: FN/FP separately,
previous mask fed back, stop at --target-iou, up to 20 clicks, NoC), and COSMOS's strategies
cosmos-centroid, cosmos-box, cosmos-box-centroid, cosmos-{N}pos, cosmos-{N}pos{M}neg (N, M
1..20; negatives from a ring around the object); with --jitter and --repeats they are the
randomness test (each point and box edge moved uniformly within +-jitter x object size).
Ctrl-C stops after the prompt group in progress and leaves a resumable folder.
"""


def _int_list(text: str) -> list[int]:
    if text.strip().lower() in ("", "none", "0"):
        return []
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _finite(low: float | None = None, high: float | None = None, *, low_open: bool = True):
    """argparse type: a finite float in (low, high] (NaN, inf and text refused)."""

    def parse(text: str) -> float:
        import math

        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(
                f"must be {'>' if low_open else '>='} {low:g}, got {text!r}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:g}, got {text!r}")
        return value

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def _mode_list(text: str) -> list[int | str]:
    """``1,3,everything`` -> [1, 3, "everything"]; 'none' -> []."""
    if text.strip().lower() in ("", "none", "0"):
        return []
    out: list[int | str] = []
    for t in (t.strip().lower() for t in text.split(",") if t.strip()):
        if t == "everything":
            out.append(t)
            continue
        try:
            out.append(int(t))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected modes 1-5 and/or 'everything', comma-separated, got {text!r}"
            ) from None
    return out


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _str_list(text: str) -> list[str]:
    if text.strip().lower() in ("", "none"):
        return []
    return [t.strip() for t in text.split(",") if t.strip()]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark",
        help="evaluate models and classical methods with simulated prompts on a dataset",
        description="Evaluate promptable models (and classical interactive methods) on a "
        "dataset folder (MSD, nnU-Net v2 raw, images/+masks/ pairs, MedSAM .npz, or a folder "
        "of those) with the paper's five prompt modes and iterative clicking. Writes "
        "results.csv (appended as it goes), results.parquet (past 100,000 rows "
        "results.parts/, written as it goes), manifest.json, summary.csv, "
        "noc.csv, figures/ and report.html to --out.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", help="dataset or suite folder (or a .npz file)")
    p.add_argument("--out", "-o", metavar="DIR", help="run folder (required unless --list)")
    p.add_argument("--methods", type=_str_list, default=["litemedsam"],
                   help="comma-separated: registry models (litemedsam, sam_vit_b, ...), "
                   "random_walker, grabcut, region_growing, geodesic_active_contour, plug-ins "
                   "(default: litemedsam)")
    p.add_argument("--modes", type=_mode_list, default=[1, 2, 3, 4, 5],
                   help="prompt modes 1-5 and/or 'everything', comma-separated, or 'none' "
                   "(default: 1,2,3,4,5)")
    p.add_argument("--grid", type=_int_list, default=None,
                   help="everything mode: points per side, 16, 32, 64 or 128, comma-separated "
                   "for several (default 32)")
    p.add_argument("--everything-option", type=_key_value, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="everything-mode filter, repeatable: pred_iou_thresh (0.88), "
                   "stability_score_thresh (0.95), stability_score_offset (1.0), "
                   "box_nms_thresh (0.7), min_mask_region_area (0), points_per_batch (64)")
    p.add_argument("--protocol", "--protocols", dest="protocol", type=_str_list, default=[],
                   help="comma-separated: iterative clicking paper, standard; COSMOS "
                   "strategies cosmos-centroid, cosmos-box, cosmos-box-centroid, "
                   "cosmos-5pos, cosmos-5pos5neg, ... (default: none)")
    p.add_argument("--clicks", type=_positive_int, default=None,
                   help="clicks per iterative run (default: 5 paper, 20 standard)")
    p.add_argument("--target-iou", type=_finite(0.0, 1.0), default=0.9,
                   help="standard protocol stops at this IoU, in (0, 1] (default 0.9)")
    p.add_argument("--selection", type=_str_list, default=None,
                   help="first, best_score, oracle (comma-separated; default: first,oracle "
                   "for models with meaningful multimask outputs, else first)")
    p.add_argument("--seed", type=int, default=0, help="seed for tie-breaks and jitter (0)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out, skipping finished prompt groups (the "
                   "options must be the same; incomplete groups are redone)")
    p.add_argument("--rebuild-manifest", action="store_true",
                   help="with --resume: rebuild a missing or damaged manifest.json from the "
                   "rows, allowed only when they carry these options' digest")
    p.add_argument("--jitter", type=_finite(0.0, low_open=False), default=0.0,
                   help="prompt noise as a fraction of object size: Gaussian sd for modes 1-5, "
                   "uniform bound for the COSMOS strategies (default 0)")
    p.add_argument("--repeats", type=_positive_int, default=1,
                   help="jitter repetitions (default 1)")
    p.add_argument("--max-cases", type=_positive_int, default=None,
                   help="first N cases per dataset")
    p.add_argument("--max-slices", type=_positive_int, default=None,
                   help="per 3D case and task, a reproducible subset of N non-empty slices")
    p.add_argument("--datasets", type=_str_list, default=None,
                   help="only these datasets of a suite (comma-separated names)")
    p.add_argument("--cases", metavar="FILE", default=None,
                   help="only these cases: a text file of dataset/case lines, or a fine-tuned "
                   "model's folder (its validation cases, so the model card's rows are "
                   "reproduced)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: automatic)")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="how SAM-family networks run: auto (the default, or $SAMSCOPE_BACKEND: "
                   "exported graphs on CPU, OpenVINO's encoder + ONNX Runtime's click graphs when "
                   "both are installed; torch on GPUs), torch, onnx, openvino, openvino+onnx")
    p.add_argument("--nsd-tolerance-mm", type=_finite(0.0), default=2.0,
                   help="normalised surface Dice tolerance (default 2 mm)")
    p.add_argument("--ray", metavar="auto|ADDRESS", default=None,
                   help="run the images on a Ray cluster (needs samscope[cluster]): 'auto' "
                        "joins RAY_ADDRESS or the cluster 'ray start' began here (else starts "
                        "a local Ray), or give the head's address, e.g. 10.0.0.1:6379; the "
                        "data must be at the same path on every node")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="Ray actors, each loading every method once (default: one per CPU, "
                        "or GPUs / --gpus-per-worker)")
    p.add_argument("--gpus-per-worker", type=_finite(0.0, low_open=False), default=0.0,
                   help="GPUs per Ray actor, e.g. 0.25 packs four on a GPU (default 0)")
    p.add_argument("--no-report", action="store_true", help="skip summary, figures and HTML")
    p.add_argument("--no-masks", action="store_true", help="do not keep predicted masks")
    p.add_argument("--list", action="store_true",
                   help="only list the detected datasets, tasks and skipped files")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


class _Bar:
    """A one-line progress bar on stderr (a plain line every few seconds when not a TTY)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def log(self, msg: str) -> None:
        if self.drawn:
            sys.stderr.write("\r\033[K")
            self.drawn = False
        print(f"[benchmark] {msg}", file=sys.stderr, flush=True)

    def update(self, p) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not self.tty and now - self.last < 5 and p.cases_done < p.cases_total:
            return
        self.last = now
        frac = p.fraction
        elapsed = now - self.t0
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        bar = "#" * int(frac * 24) + "." * (24 - int(frac * 24))
        eta_s = "--:--" if eta != eta else f"{int(eta // 60):02d}:{int(eta % 60):02d}"
        line = (f"[{bar}] {p.cases_done}/{p.cases_total} cases, {p.images_done} images, "
                f"{p.rows_written} rows, {int(elapsed // 60):02d}:{int(elapsed % 60):02d} "
                f"elapsed, ETA {eta_s}  {p.message[:40]}")
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
            sys.stderr.flush()
            self.drawn = True
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            self.drawn = False


def _list(path: str) -> int:
    from app.core.benchmark.datasets import discover

    suite = discover(path)
    for d in suite.datasets:
        tasks = ", ".join(f"{t.label}={t.name}" for t in d.tasks)
        print(f"{d.name}\t{d.layout}\t{len(d.cases)} cases\ttasks: {tasks}\t{d.root}")
        for s in d.skipped:
            print(f"  skipped {s.path}: {s.reason}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.list:
        return _list(args.path)
    if not args.out:
        raise ValueError("--out DIR is required (the run folder)")
    from pathlib import Path

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"{args.out}: --out is an existing file; a run folder is needed")
    if args.rebuild_manifest and not args.resume:
        raise ValueError("--rebuild-manifest only applies with --resume")
    if args.backend:
        import os

        os.environ["SAMSCOPE_BACKEND"] = args.backend  # every model the runner loads
    from app.core.benchmark.report import write_report
    from app.core.benchmark.results import read_manifest
    from app.core.benchmark.runner import BenchmarkPlan, iter_benchmark, read_case_list

    modes = [m for m in args.modes if m != "everything"]
    if "everything" in args.modes:
        grids = args.grid or [32]
    elif args.grid or args.everything_option:
        raise ValueError("--grid and --everything-option apply with --modes everything")
    else:
        grids = []
    plan = BenchmarkPlan(
        data=args.path, out_dir=args.out, methods=args.methods, modes=modes, grids=grids,
        everything_options=dict(args.everything_option),
        protocols=args.protocol, clicks=args.clicks, target_iou=args.target_iou,
        selections=args.selection, seed=args.seed, resume=args.resume, jitter=args.jitter,
        repeats=args.repeats, max_cases=args.max_cases, max_slices=args.max_slices,
        datasets=args.datasets, cases=None if args.cases is None else read_case_list(
            args.cases), device=args.device, nsd_tolerance_mm=args.nsd_tolerance_mm,
        save_masks=not args.no_masks, rebuild_manifest=args.rebuild_manifest,
        ray=args.ray, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
    )
    if args.ray is None and (args.workers is not None or args.gpus_per_worker):
        raise ValueError("--workers and --gpus-per-worker apply with --ray")
    plan.validate()
    cancel = threading.Event()
    bar = _Bar(args.quiet)

    def on_sigint(signum, frame):  # first Ctrl-C: stop cleanly; second: abort now
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        bar.log("Ctrl-C: stopping after the prompt group in progress "
                "(press again to abort at once)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        for _ in iter_benchmark(plan, on_progress=bar.update, on_log=bar.log, cancel=cancel):
            pass
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
    if not args.no_report:
        report = write_report(args.out)
        bar.log(f"report: {report}")
    if cancel.is_set():
        bar.log(f"interrupted: continue with  samscope benchmark {args.path} --out {args.out} "
                "--resume  (and the same options)")
        return 130
    if read_manifest(args.out).get("status") == "incomplete":
        # the log said which cases and why (a lost Ray worker); a resume tries them again
        bar.log(f"incomplete: continue with  samscope benchmark {args.path} --out {args.out} "
                "--resume  (and the same options)")
        return 1
    return 0
