"""The export dialog: a suggested ``<source>_labels.<ext>``, the chosen format's extension
added to a bare name, and the folder and format remembered between exports (in SAMScope's own
settings file beside its session logs, not napari's)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from app.core.annotate import recovery

__all__ = ["EXPORT_FORMATS", "export_filters", "suggested_export_path", "ask_and_export"]

#: the dialog's filters -> the extension they write
EXPORT_FORMATS = {"PNG mask (*.png)": ".png", "NIfTI (*.nii.gz)": ".nii.gz",
                  "DICOM SEG (*.dcm)": ".dcm", "DICOM RTSTRUCT (*.dcm)": ".dcm"}
_SOURCE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
                      ".bmp", ".dcm")


def _settings():
    from qtpy.QtCore import QSettings

    return QSettings(str(recovery.state_dir() / "settings.ini"), QSettings.Format.IniFormat)


def export_filters(controller) -> list[str]:
    """The formats the open image can be exported to, the one used last first."""
    vol = controller.volume
    filters = ["NIfTI (*.nii.gz)"]
    if vol.meta.get("dicom_datasets"):
        filters.append("DICOM SEG (*.dcm)")
        from app.core.io.rtstruct import rtstruct_available

        if rtstruct_available() and not vol.is_2d:
            filters.append("DICOM RTSTRUCT (*.dcm)")
    if vol.is_2d:
        filters.insert(0, "PNG mask (*.png)")
    last = _settings().value("export/filter", "")
    if last in filters:
        filters.remove(last)
        filters.insert(0, last)
    return filters


def suggested_export_path(controller, filter_text: str) -> str:
    """``<folder>/<source name>_labels.<ext>``: the folder last exported to (else the
    source's), the extension of the chosen format."""
    src = Path(str(controller.volume.source or "image"))
    stem = src.name
    for ext in _SOURCE_EXTENSIONS:
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    folder = _settings().value("export/folder", "") or (
        str(src.parent) if src.parent.is_dir() else str(Path.home()))
    return str(Path(folder) / f"{stem}_labels{EXPORT_FORMATS[filter_text]}")


def ask_and_export(parent, controller,
                   export: Callable[[str, str | None], Path | None]) -> Path | None:
    """Show the save dialog and call ``export(path, format)``; remember what worked."""
    filters = export_filters(controller)
    path, chosen = QFileDialog.getSaveFileName(
        parent, "Export labels", suggested_export_path(controller, filters[0]),
        ";;".join(filters), filters[0])
    if not path:
        return None
    ext = EXPORT_FORMATS.get(chosen, "")
    if ext and not path.lower().endswith(tuple(EXPORT_FORMATS.values()) + (".nii",)):
        path += ext  # a bare name gets the chosen format's extension
    out = export(path, "rtstruct" if "RTSTRUCT" in chosen else None)
    if out is not None:
        _settings().setValue("export/folder", str(Path(out).parent))
        _settings().setValue("export/filter", chosen)
    return out
