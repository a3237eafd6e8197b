"""Default step counts of the simulations: plain numbers, importable without torch (CLI --help).

Seconds on a 2-core CPU are in docs/theory.md; the paper used 10,000 steps for every simulation.
"""

STRONG_AUG_STEPS = 2000
TWO_LAYER_STEPS = 2000
DEPTH_STEPS = 1000
