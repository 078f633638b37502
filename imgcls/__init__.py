"""imgcls: what the trainer and the service must agree on, and the command line above both.

The bundle manifest and the model repository (``manifest``, ``repository``), the preprocessing both
apply (``preprocess``), the export formats (``formats``), the errors (``errors``) and what a TensorRT
engine needs of the GPU it runs on (``engine_platform``). ``cli`` composes the trainer's, the
service's and the benchmarks' commands; nothing else here imports ``trainer``, ``service`` or
``benchmarks`` (import-linter enforces it: ``make lint``).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
