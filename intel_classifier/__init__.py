"""The entry points: the `intel-classifier` command and the wiring of each process's roles.

The top of the import graph: it may import `api`, `worker`, `client` and `shared`;
nothing imports it.
"""
