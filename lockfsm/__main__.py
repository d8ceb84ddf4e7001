"""``python -m lockfsm``: the same as the ``lockfsm`` command."""

import sys

from lockfsm.cli import main

sys.exit(main())
