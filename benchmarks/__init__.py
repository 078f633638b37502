"""imgcls benchmarks: load tests and measurements (``imgcls bench ...``), ``imgcls evaluate`` (it needs
both halves), the peer servers ``imgcls bench compare`` measures against, and ``results/``, the records
the docs quote. It may import ``imgcls``, ``trainer`` and ``service``; nothing imports it.
"""
