"""``python -m lockfsm``: the same as the ``lockfsm`` command."""

import sys

from lockfsm.tools.cli import main

sys.exit(main())
