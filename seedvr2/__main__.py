"""`python -m seedvr2 INPUT -o OUTPUT ...`: see `seedvr2.cli`; `python -m seedvr2 convert ...`: see `seedvr2.convert`."""
import sys

if sys.argv[1:2] == ["convert"]:
    from .convert import main as convert_main
    sys.exit(convert_main(sys.argv[2:]))

from .cli import main

sys.exit(main())
