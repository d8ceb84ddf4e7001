"""``python -m lockfsm.agent``: the same as ``lockfsm-etcd-agent``."""

import sys

from lockfsm.agent.main import main

sys.exit(main())
