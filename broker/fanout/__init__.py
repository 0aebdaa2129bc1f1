"""Fan-out: routing messages between processes, and delivering them inside one process.

One noun per module: ``router`` (which groups a message goes to), ``membership`` (the groups
this process is in), ``channel`` (this process's channel and probes), ``upkeep`` (registry,
degraded, resync), ``hub`` (the local index and dispatch), ``receiver`` (what the hub hands a
connection), ``settings`` and ``running`` (one hub per event loop, built from the settings).
"""
