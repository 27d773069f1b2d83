"""The embedded testbed: a miniature Stable-Diffusion-style world whose ground truth is known.

- :mod:`conceptspace.testbed.data`: the procedural world. 32×32 RGB images of one shape with six factors
  (shape, colour, size, x, y, background), anti-aliased numpy rendering (50,000 images in seconds), captions
  that mention or omit each factor at random, the prompt → fixed-factors parser, and an on-the-fly dataset.
- :mod:`conceptspace.testbed.probe`: a small CNN that reads the six factors back from any 32×32 image, with
  shipped weights in ``weights/probe/`` (safetensors + ``config.json``).
- :mod:`conceptspace.testbed.diversity`: ground-truth diversity from factors (true or probed): entropy of the
  shape×colour distribution and spreads of size and position, with bootstrap 95% intervals.

Nothing heavy is imported here: import the submodule you need.
"""
