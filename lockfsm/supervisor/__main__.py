"""``python -m lockfsm.supervisor``: the same as ``lockfsm-supervisor``."""

from lockfsm.supervisor.process import entry

entry()
