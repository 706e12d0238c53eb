"""``samscope benchmark``: the paper's prompt modes and click protocols on a dataset folder."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

__all__ = ["register", "run"]

_EPILOG = """\
examples:
  samscope benchmark ../shared/data/png_pairs --methods litemedsam,random_walker \\
      --modes 1,2,3,4,5 --out runs/pairs
  samscope benchmark ../shared/data/msd_like --modes 3,5 --protocol paper --clicks 5 \\
      --max-slices 4 --out runs/msd
  samscope benchmark DATA --out runs/pairs --resume        # continue an interrupted run
  samscope benchmark DATA --list                           # show detected datasets and tasks

Modes (Mazurowski et al. 2023): 1 point on the largest component; 2 a point on each of up to
3 components, one call; 3 box of the largest component; 4 a box per component (up to 3),
masks united; 5 box of the whole mask. Protocols: paper (Algorithm 1) or standard (RITM:
FN/FP separately, previous mask fed back, stop at --target-iou, up to 20 clicks, NoC).
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
        "results.csv (appended as it goes), results.parquet, manifest.json, summary.csv, "
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
    p.add_argument("--modes", type=_int_list, default=[1, 2, 3, 4, 5],
                   help="prompt modes 1-5, comma-separated, or 'none' (default: 1,2,3,4,5)")
    p.add_argument("--protocol", type=_str_list, default=[],
                   help="iterative clicking: paper, standard, or both comma-separated "
                   "(default: none)")
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
                   help="prompt noise, sd as a fraction of object size (default 0)")
    p.add_argument("--repeats", type=_positive_int, default=1,
                   help="jitter repetitions (default 1)")
    p.add_argument("--max-cases", type=_positive_int, default=None,
                   help="first N cases per dataset")
    p.add_argument("--max-slices", type=_positive_int, default=None,
                   help="per 3D case and task, a reproducible subset of N non-empty slices")
    p.add_argument("--datasets", type=_str_list, default=None,
                   help="only these datasets of a suite (comma-separated names)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: automatic)")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default=None,
                   help="how SAM-family networks run: auto (exported ONNX graph on CPU, torch on "
                   "GPUs; the default, or $SAMSCOPE_BACKEND), torch, onnx")
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
    from app.core.benchmark.runner import BenchmarkPlan, iter_benchmark

    plan = BenchmarkPlan(
        data=args.path, out_dir=args.out, methods=args.methods, modes=args.modes,
        protocols=args.protocol, clicks=args.clicks, target_iou=args.target_iou,
        selections=args.selection, seed=args.seed, resume=args.resume, jitter=args.jitter,
        repeats=args.repeats, max_cases=args.max_cases, max_slices=args.max_slices,
        datasets=args.datasets, device=args.device, nsd_tolerance_mm=args.nsd_tolerance_mm,
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
    return 0
