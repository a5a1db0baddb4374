"""Built-in search strategies, registered by entry point under ``procache_opt.strategies``.

* ``constrained_sampling``: ProCache's own search (arXiv 2512.17298, Sec. 3.2; ``CASS.py``): K = 5 sampled
  candidates, keep the best.
* ``random``: uniform samples from the space, never repeated.
* ``uniform``: FORA-style evenly spaced FULL steps, one schedule per feasible FULL-step count.
* ``exhaustive``: every member of a small space.
* ``tpe``: Optuna's TPE over segment lengths.
* ``evolutionary``: a genetic algorithm with selection, crossover and mutation objects.
"""
