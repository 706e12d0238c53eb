"""PyInstaller hook: keep segment-anything's sources (TorchScript and inspect read them)."""

module_collection_mode = "pyz+py"
