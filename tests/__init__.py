"""The suite, by kind: ``unit`` (pure and fast: no training, no server), ``integration`` (real training,
export and runtimes on tiny data), ``api`` (the HTTP stack in-process), ``e2e`` (real servers, clients
and commands in subprocesses), ``cli`` and ``deploy`` (Dockerfile and Kubernetes manifests). Fixtures
build their data on the fly (``conftest.py``). Tests may import everything.
"""
