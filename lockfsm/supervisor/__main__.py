"""``python -m lockfsm.supervisor``: the same as ``lockfsm-supervisor``."""

import sys

from lockfsm.supervisor.process import main

sys.exit(main())
