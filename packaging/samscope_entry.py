"""Entry point of the frozen SAMScope bundle: the same ``samscope`` command as the pip install.

PyInstaller freezes this script; everything else is found through the installed ``app``
package (staged from a wheel build by ``packaging/build.py``), so the bundle runs the code and
package data that a ``pip install`` would.
"""

import multiprocessing
import sys

if __name__ == "__main__":
    # a frozen executable re-executes itself for multiprocessing children
    multiprocessing.freeze_support()
    from app.cli import main

    sys.exit(main())
