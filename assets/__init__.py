"""Sample scans and icons shipped with SAMScope (see LICENSES.md in this folder)."""
