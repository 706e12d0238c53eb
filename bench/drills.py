"""Results-integrity drills for the benchmark: kill -9 and resume, two writers, damaged folders.

    python bench/drills.py [--kills 10] [--fuzz 40] [--cases 8] [--seed 0] [--disk-full]

1. **Kill drill**: an uninterrupted run is the reference. A second run into a fresh folder is
   killed with SIGKILL at a random moment, resumed with ``--resume``, killed again, ... ``--kills``
   times, then resumed to the end. While it runs, a second writer (``--resume`` into the same
   folder) is started once per kill and must be refused. The final table is compared with the
   reference: rows lost, rows duplicated, values that differ, mask files that differ.
2. **Fuzz round**: a copy of the finished folder is damaged at random (``results.csv`` cut at
   a random byte, a chunk of it doubled, bytes flipped; a mask file emptied, cut or deleted;
   ``manifest.json`` cut or deleted) and resumed. Each trial must end either in a clean refusal
   (a :class:`~app.core.errors.SamScopeError` naming the file) or in exactly the reference
   table; anything else (another exception, a row lost or doubled) is a crash.
3. ``--disk-full`` (root only): a real full disk on a small tmpfs, freed, then resumed.

Uses ``region_growing`` (no model weights) on ``../shared/data/png_pairs/fetal_head_us`` (or a
synthetic data set when that is absent). Prints the figures; exit 1 when any row was lost or
doubled, a second writer got in, or anything crashed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.core.benchmark.results import COLUMNS, load_results  # noqa: E402
from app.core.benchmark.runner import BenchmarkPlan, run_benchmark  # noqa: E402
from app.core.errors import SamScopeError  # noqa: E402

KEY = ["dataset", "task", "case", "method", "protocol", "repeat", "click", "selection"]
VOLATILE = {"seconds", "prepare_seconds"}


def dataset(tmp: Path, cases: int) -> Path:
    shared = REPO.parent / "shared" / "data" / "png_pairs" / "fetal_head_us"
    if (shared / "images").is_dir():
        return shared
    from PIL import Image

    root = tmp / "synthetic"
    rng = np.random.default_rng(0)
    for i in range(cases):
        m = np.zeros((160, 200), np.uint8)
        m[30 + i : 120 + i, 40 : 150 - i] = 255
        img = (np.where(m > 0, 160, 70) + rng.normal(0, 10, m.shape)).clip(0, 255)
        for sub, arr in (("images", img.astype(np.uint8)), ("masks", m)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / sub / f"c{i:02d}.png")
    return root


def cli(data: Path, out: Path, cases: int, seed: int) -> list[str]:
    return [sys.executable, "-m", "app", "benchmark", str(data), "--methods", "region_growing",
            "--modes", "1,2,3,4,5", "--protocol", "paper,standard", "--clicks", "4",
            "--max-cases", str(cases), "--seed", str(seed), "--out", str(out), "--no-report",
            "-q"]


def plan_kwargs(data: Path, cases: int, seed: int) -> dict:
    return dict(data=data, methods=("region_growing",), modes=(1, 2, 3, 4, 5),
                protocols=("paper", "standard"), clicks=4, max_cases=cases, seed=seed)


def _as_text(df):
    """Every cell as text, missing values as "NA" (so that NaN equals NaN)."""
    return df.astype(object).where(df.notna(), "NA").astype(str)


def compare(ref: Path, out: Path) -> dict[str, int]:
    """Rows lost / duplicated / differing and mask files differing, ``out`` against ``ref``."""
    a, b = load_results(ref), load_results(out)
    cols = [c for c in COLUMNS if c not in VOLATILE and c in a and c in b]
    dup = int(b.duplicated(KEY).sum())
    b1 = b.drop_duplicates(KEY)
    ka = {tuple(r) for r in _as_text(a[KEY]).itertuples(index=False)}
    kb = {tuple(r) for r in _as_text(b1[KEY]).itertuples(index=False)}
    lost, extra = len(ka - kb), len(kb - ka)
    m = _as_text(a[cols]).merge(_as_text(b1[cols]), on=KEY, how="inner",
                                suffixes=("_a", "_b"))
    differ = sum(int((m[f"{c}_a"] != m[f"{c}_b"]).sum()) for c in cols if c not in KEY)
    masks_differ = 0
    for rel in a["mask_file"]:
        if rel:
            pa, pb = ref / rel, out / rel
            if not pb.is_file() or pa.read_bytes() != pb.read_bytes():
                masks_differ += 1
    return {"rows": len(b), "expected": len(a), "lost": lost, "duplicated": dup,
            "extra": extra, "values_differ": differ, "masks_differ": masks_differ}


def kill_drill(data: Path, tmp: Path, kills: int, cases: int, seed: int, ref: Path,
               rng: random.Random, t_ref: float) -> dict[str, int]:
    """Rounds of: fresh folder, run, kill -9 at a random moment, resume, ... until complete.

    Kills land uniformly over the time a whole run takes; a round ends when a run completes,
    and is compared with the reference. Rounds go on until ``kills`` kills have happened.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "RUST_BACKTRACE": "0"}
    total = {"rows": 0, "expected": 0, "lost": 0, "duplicated": 0, "extra": 0,
             "values_differ": 0, "masks_differ": 0}
    killed = second_admitted = second_refused = crashes = runs = rounds = 0
    while killed < kills:
        out = tmp / f"killed{rounds}"
        rounds += 1
        cmd = cli(data, out, cases, seed)
        while True:
            resume = ["--resume"] if out.exists() else []
            proc = subprocess.Popen([*cmd, *resume], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True, env=env)
            runs += 1
            if killed < kills:
                delay = rng.uniform(0.2, t_ref)
                time.sleep(delay / 2)
                if proc.poll() is None and out.exists() and rng.random() < 0.5:
                    # a second writer while the first is running: must be refused
                    second = subprocess.run([*cmd, "--resume"], capture_output=True, text=True,
                                            env=env, timeout=120)
                    if second.returncode == 2 and "another benchmark" in second.stderr:
                        second_refused += 1
                    elif second.returncode == 0 and proc.poll() is None:
                        second_admitted += 1
                    elif "Traceback" in second.stderr:
                        crashes += 1
                        print(second.stderr[-2000:], file=sys.stderr)
                    delay = max(0.0, delay / 2 - 1.0)  # the second writer took about a second
                else:
                    delay /= 2
                time.sleep(delay)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    killed += 1
            _, err = proc.communicate(timeout=600)
            if "Traceback" in err:
                crashes += 1
                print(err[-2000:], file=sys.stderr)
            if proc.returncode == 0:
                break
            if proc.returncode != -signal.SIGKILL:
                crashes += 1
                print(f"run exited {proc.returncode}: {err[-600:]}", file=sys.stderr)
                break
        res = compare(ref, out)
        for k in total:
            total[k] += res[k]
    total.update(kills=killed, runs=runs, rounds=rounds, second_writers_refused=second_refused,
                 second_writers_admitted=second_admitted, crashes=crashes)
    return total


def _damage(folder: Path, rng: random.Random) -> str:
    csv = folder / "results.csv"
    raw = csv.read_bytes()
    what = rng.choice(["cut_csv", "double_chunk", "flip_bytes", "mask_empty", "mask_cut",
                       "mask_delete", "manifest_cut", "manifest_delete", "csv_and_mask"])
    masks = sorted(p for p in (folder / "masks").rglob("*.png"))
    if what in ("cut_csv", "csv_and_mask"):
        csv.write_bytes(raw[: rng.randrange(len(raw) // 4, len(raw))])
    if what == "double_chunk":
        i = rng.randrange(len(raw) // 3, len(raw))
        j = min(len(raw), i + rng.randrange(50, 2000))
        csv.write_bytes(raw[:j] + raw[i:j] + raw[j:])
    if what == "flip_bytes":
        b = bytearray(raw)
        for _ in range(rng.randrange(1, 6)):
            k = rng.randrange(len(b) // 2, len(b))
            b[k] = rng.randrange(32, 127)
        csv.write_bytes(bytes(b))
    if what in ("mask_empty", "csv_and_mask") and masks:
        rng.choice(masks).write_bytes(b"")
    if what == "mask_cut" and masks:
        p = rng.choice(masks)
        d = p.read_bytes()
        p.write_bytes(d[: rng.randrange(1, len(d))])
    if what == "mask_delete" and masks:
        rng.choice(masks).unlink()
    if what == "manifest_cut":
        m = (folder / "manifest.json").read_bytes()
        (folder / "manifest.json").write_bytes(m[: rng.randrange(1, len(m))])
    if what == "manifest_delete":
        (folder / "manifest.json").unlink()
    return what


def fuzz_round(data: Path, tmp: Path, trials: int, cases: int, seed: int, ref: Path,
               rng: random.Random) -> dict[str, int]:
    kw = plan_kwargs(data, cases, seed)
    counts = {"trials": 0, "resumed_exact": 0, "refused_cleanly": 0, "lost": 0,
              "duplicated": 0, "values_differ": 0, "crashes": 0}
    for t in range(trials):
        folder = tmp / f"fuzz{t}"
        shutil.copytree(ref, folder)
        what = _damage(folder, rng)
        counts["trials"] += 1
        try:
            run_benchmark(BenchmarkPlan(out_dir=folder, resume=True, **kw))
        except SamScopeError as exc:
            msg = str(exc)
            if "\n" in msg or "results.csv" not in msg and "manifest.json" not in msg:
                counts["crashes"] += 1
                print(f"  fuzz {t} ({what}): refusal not naming the file: {msg}")
            else:
                counts["refused_cleanly"] += 1
            shutil.rmtree(folder)
            continue
        except Exception:  # noqa: BLE001 - that is what a crash is
            counts["crashes"] += 1
            print(f"  fuzz {t} ({what}): crash\n{traceback.format_exc()}")
            continue
        c = compare(ref, folder)
        counts["lost"] += c["lost"]
        counts["duplicated"] += c["duplicated"]
        counts["values_differ"] += c["values_differ"] + c["masks_differ"] + c["extra"]
        if c["lost"] == c["duplicated"] == c["values_differ"] == c["masks_differ"] == 0:
            counts["resumed_exact"] += 1
        else:
            print(f"  fuzz {t} ({what}): {c}")
        shutil.rmtree(folder)
    return counts


def disk_full_drill(data: Path, tmp: Path, cases: int, seed: int, ref: Path) -> dict | None:
    if os.geteuid() != 0:
        print("disk-full drill: skipped (needs root for mount -t tmpfs)")
        return None
    mnt = tmp / "small_disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]).returncode:
        print("disk-full drill: skipped (mount failed)")
        return None
    try:
        out = mnt / "run"
        filler = mnt / "filler"
        # leave ~200 kB: the run (~100 kB of rows, a 4 kB page per mask PNG) fills it mid-way
        filler.write_bytes(b"\0" * (2 * 1024 * 1024 - 200_000))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        full = subprocess.run(cli(data, out, cases, seed), capture_output=True, text=True,
                              env=env, timeout=600)
        err_line = full.stderr.strip().splitlines()[-1] if full.stderr.strip() else ""
        filler.unlink()  # the disk is freed
        done = subprocess.run([*cli(data, out, cases, seed), "--resume"], capture_output=True,
                              text=True, env=env, timeout=600)
        res = compare(ref, out) if done.returncode == 0 else {}
        res.update(first_exit=full.returncode, first_error=err_line,
                   resume_exit=done.returncode, traceback="Traceback" in full.stderr + done.stderr)
        if done.returncode:
            res["resume_error"] = done.stderr.strip()[-300:]
        return res
    finally:
        subprocess.run(["umount", str(mnt)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--fuzz", type=int, default=40)
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--disk-full", action="store_true")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="samscope_drills_") as t:
        tmp = Path(t)
        data = dataset(tmp, args.cases)
        ref = tmp / "reference"
        t0 = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run(cli(data, ref, args.cases, args.seed), check=True, env=env,
                       stderr=subprocess.DEVNULL)
        t_ref = time.perf_counter() - t0
        n_ref = len(load_results(ref))
        print(f"reference: {n_ref} rows, {t_ref:.1f} s ({data})", flush=True)
        bad = False
        k = kill_drill(data, tmp, args.kills, args.cases, args.seed, ref, rng, t_ref)
        print(f"kill drill: {k['kills']} kill -9 over {k['runs']} runs in {k['rounds']} "
              f"rounds; rows {k['rows']}/"
              f"{k['expected']}, lost {k['lost']}, duplicated {k['duplicated']}, extra "
              f"{k['extra']}, values differing {k['values_differ']}, mask files differing "
              f"{k['masks_differ']}; second writers refused {k['second_writers_refused']}, "
              f"admitted {k['second_writers_admitted']}; crashes {k['crashes']}")
        bad |= bool(k["lost"] or k["duplicated"] or k["extra"] or k["values_differ"] or
                    k["masks_differ"] or k["second_writers_admitted"] or k["crashes"])
        f = fuzz_round(data, tmp, args.fuzz, args.cases, args.seed, ref, rng)
        print(f"fuzz round: {f['trials']} damaged folders resumed: {f['resumed_exact']} exact, "
              f"{f['refused_cleanly']} refused naming the file; rows lost {f['lost']}, "
              f"duplicated {f['duplicated']}, values differing {f['values_differ']}, "
              f"crashes {f['crashes']}")
        bad |= bool(f["lost"] or f["duplicated"] or f["values_differ"] or f["crashes"])
        if args.disk_full:
            d = disk_full_drill(data, tmp, args.cases, args.seed, ref)
            if d is not None:
                print(f"disk-full drill: {d}")
                bad |= bool(d.get("lost") or d.get("duplicated") or d.get("traceback") or
                            d.get("resume_exit") or d.get("masks_differ"))
    print("FAILED" if bad else "OK: 0 rows lost, 0 duplicated, 0 crashes", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
