"""``lockfsm-etcd-agent``: the per-host etcd lease agent of the etcd backend."""
