"""imgcls trainer: a folder of labelled images in, an evaluated and exported model bundle out.

The pipeline stages, one module each: ``data`` and ``splits`` (finding and splitting images),
``transforms``, ``models``, ``engine`` (the train/evaluate loops), ``report`` (test metrics
and plots), ``export`` (the bundle) and ``train`` (the recipe that runs them in order); ``cli``
holds ``imgcls data|models|train|export``. It imports ``imgcls`` (the bundle contract), never
``service`` or ``benchmarks``.
"""
