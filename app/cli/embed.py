"""``samscope embed DATA``: fill the on-disk embedding store ahead of time.

Every image under DATA (files and DICOM folders; label folders such as ``masks/`` and
``labelsTr/`` are skipped) is read as the app and the benchmark read it, each slice is embedded
once and kept in the store (``<user cache>/embeddings``, LRU-bounded), so that opening the
scans, moving through slices after a restart and benchmarking them skip the image encoder.
Slices already stored are only checked, not recomputed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from app.core.models.backends import BACKENDS

#: folders that hold ground truth, not images (benchmark layouts)
_LABEL_DIRS = {"masks", "labels", "labelstr", "labelsts", "gt", "segmentations", "nifti"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "embed",
        help="precompute image embeddings into the on-disk store",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("data", nargs="+", help="image files, DICOM folders or folders of them")
    p.add_argument("--model", default="litemedsam", help="registry name (default litemedsam)")
    p.add_argument("--backend", default=None, choices=BACKENDS,
                   help="inference backend (default auto: exported graph on CPU, torch on GPU)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: best available)")
    p.add_argument("--store", metavar="DIR", help="store folder (default: the user cache)")
    p.add_argument("--max-bytes", type=int, metavar="N",
                   help="size bound of the store in bytes (default 2 GiB)")
    p.add_argument("--max-slices", type=int, metavar="K",
                   help="at most K slices per volume, evenly spaced (default all)")
    p.add_argument("--dry-run", action="store_true", help="list what would be embedded")
    p.set_defaults(func=run)


def iter_sources(paths) -> list[Path]:
    """Image files and DICOM folders under ``paths``, sorted, label folders skipped."""
    from app.core.io import guess_format

    out: list[Path] = []
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such file or folder")
        if root.is_file():
            out.append(root)
            continue
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d.lower() not in _LABEL_DIRS
                             and not d.startswith("."))
            here = Path(folder)
            kinds = {f: guess_format(here / f) for f in sorted(files) if not f.startswith(".")}
            if any(k == "dicom" for k in kinds.values()):
                out.append(here)  # one DICOM series folder
                dirs[:] = []
            out.extend(here / f for f, k in kinds.items() if k in ("nifti", "nrrd", "raster"))
    return out


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    import time

    import numpy as np

    from app.core.engine import Engine
    from app.core.errors import SamScopeError
    from app.core.io import read_image
    from app.core.models.backends import model_backend
    from app.core.models.embedding_store import EmbeddingStore
    from app.core.models.registry import load_model

    sources = iter_sources(args.data)
    if args.dry_run:
        for s in sources:
            print(s)
        return 0
    model = load_model(args.model, device=args.device, backend=args.backend,
                       on_status=lambda m: print(m, file=sys.stderr))
    store = EmbeddingStore(args.store, max_bytes=args.max_bytes)
    engine = Engine(model, store=store, cache_bytes=0)
    t_all = time.perf_counter()
    n_images = 0
    for src in sources:
        try:
            vol = read_image(src)
        except (SamScopeError, OSError, ValueError) as exc:
            print(f"skipped {src}: {exc}", file=sys.stderr)
            continue
        slices = list(range(vol.n_slices))
        if args.max_slices and len(slices) > args.max_slices:
            slices = sorted(set(np.linspace(0, vol.n_slices - 1, args.max_slices)
                                .round().astype(int).tolist()))
        before = engine.stats
        t = time.perf_counter()
        engine.embed_volume(vol, slices)
        after = engine.stats
        n_images += 1
        print(json.dumps({
            "source": str(src), "slices": len(slices),
            "computed": after.embeddings_computed - before.embeddings_computed,
            "found": after.embeddings_loaded - before.embeddings_loaded,
            "seconds": round(time.perf_counter() - t, 2)}))
    s = engine.stats
    print(json.dumps({
        "images": n_images, "computed": s.embeddings_computed, "found": s.embeddings_loaded,
        "rejected": store.rejected, "model": args.model, "backend": model_backend(model),
        "store": str(store.folder), "store_bytes": store.total_bytes,
        "seconds": round(time.perf_counter() - t_all, 1)}))
    return 0
