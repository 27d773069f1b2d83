"""The field's remedies as regimes: their home is :mod:`conceptspace.sampling.remedies`; this name keeps
``from conceptspace.remedies import CADS`` working."""

from conceptspace.sampling.remedies import *  # noqa: F403
from conceptspace.sampling.remedies import __all__  # noqa: F401
