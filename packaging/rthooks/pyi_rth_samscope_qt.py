"""PyInstaller runtime hook: pin the frozen app to the one Qt binding it carries.

Runs before ``samscope_entry.py``. qtpy, napari, superqt, magicgui, vispy and matplotlib each
pick a Qt binding at import time; with ``QT_API=pyside6`` set and PySide6 already imported they
all agree on PySide6, even if the user's environment says otherwise (the bundle holds no other
binding, so any other choice could only fail).
"""

import os

os.environ["QT_API"] = "pyside6"

import PySide6  # noqa: E402,F401  - import the binding first so every later lookup finds it
