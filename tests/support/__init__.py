"""What the tests share and are not tests themselves: real lock services (etcd members and lease
agents, sanlock daemons), simulated hosts in processes of their own (the fault matrix's daemons,
the QEMU hosts' daemons, a libvirt host), the fault matrix's rows, documented outcomes and driver,
the stateful machines' base, and readers of what the kernel says.  The simulated host that runs
stand-in guests is the package's own, :mod:`lockfsm.embed.standin`; the kernel's readers are
:mod:`lockfsm.protocol.kernel`.  Nothing here is a fixture: those live in tests/conftest.py and
tests/support/fixtures.py."""

import os

#: The source tree: the working directory of the test processes that run a module of it.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
