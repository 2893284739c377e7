"""``python -m d3s`` (and ``accelerate launch d3s ...`` from the repository root) run the CLI."""

import os
import sys

if __package__ in (None, ""):  # run as `python d3s` (the folder): import the installed package, not siblings
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.path.dirname(here))
    from d3s.cli import main
else:
    from .cli import main

sys.exit(main())
