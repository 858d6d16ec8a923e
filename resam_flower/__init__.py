"""resam-flower: RESAM (resilient averaging of momentums) for Flower.

Resilient averaging on the server (:mod:`resam_flower.aggregators`), distributed momentum at the
workers (:mod:`resam_flower.clients`), Byzantine behaviours (:mod:`resam_flower.attacks`), as Flower
strategies and client mods.
"""

__version__ = "0.1.0"
