"""`python -m seedvr2 INPUT -o OUTPUT ...`: see `seedvr2.cli`."""
import sys

from .cli import main

sys.exit(main())
