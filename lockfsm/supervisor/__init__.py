"""``lockfsm-supervisor``: the per-guest process that holds the guest's leases and runs the guest.

Kept lean on purpose (it runs once per guest): it imports the protocol layer and the holding
half of its backend, never the daemon side, the tools, ``attrs`` or ``transitions``.
"""
