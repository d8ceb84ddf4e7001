"""The protocol layer: the lifecycle tables (generated from ``specs/``), the table interpreter,
the control socket's wire format, the launch spec and the run directory's records.

Light and sans-I/O where it can be: the supervisor imports it, once per guest.  It imports only
:mod:`lockfsm.errors` and the standard library, never a layer above it.
"""
