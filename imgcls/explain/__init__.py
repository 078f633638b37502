"""Explanations: which pixels a prediction rests on, for the report, ``imgcls explain`` and the service.

- ``geometry``: a map on the model's input crop back onto the original image, and the overlay;
- ``gradcam``: :class:`Explainer`, Grad-CAM (pytorch-grad-cam) on a bundle's eager model;
- ``bundle``: the eager model and its target layer, from a bundle (``load_explainer``).

Grad-CAM needs the ``explain`` extra (``pip install "imgcls[explain]"``).
"""
