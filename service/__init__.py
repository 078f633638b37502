"""imgcls inference service, by layer: ``settings``; ``runtimes`` (ONNX Runtime, TorchScript,
TensorRT); ``batcher`` (plain asyncio) and ``worker``; the HTTP routes, ``app`` and ``server``;
``cli`` holds ``imgcls serve|predict``. It imports ``imgcls``, never ``trainer`` or ``benchmarks``.
"""
