"""imgcls trainer: a folder of labelled images in, an evaluated and exported model bundle out.

The pipeline stages, one module each: ``data`` and ``splits`` (finding and splitting images),
``transforms``, ``models``, ``engine`` (the train/evaluate loops), ``report`` (test metrics
and plots), ``export`` (the bundle) and ``train`` (the recipe that runs them in order).
``manifest`` is the bundle contract shared with the service.

This package's ``__init__`` imports nothing heavy, so ``trainer.manifest`` stays cheap to import.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
