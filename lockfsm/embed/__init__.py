"""Reference embeddings of the seed API: a virt daemon that drives QEMU
(:mod:`lockfsm.embed.host`).
"""
