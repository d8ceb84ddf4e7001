"""The command line and what it runs: the demo, status, configuration files, the spec generator,
the formal model and its checker, the diagrams.
"""
