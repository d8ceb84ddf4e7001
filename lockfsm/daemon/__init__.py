"""The daemon side: the seed API (:func:`load_driver`, :class:`LockDriver`, :class:`LockManager`)
that a virtualization daemon embeds, with its values, configuration and supervisor client.
"""
