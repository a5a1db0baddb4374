"""ProCache's constrained schedule space (arXiv 2512.17298, Section 3.2, Eqs. 2-4).

Example:
    >>> from procache_opt.space import ScheduleSpace
    >>> ScheduleSpace(50, num_full=13, v_min=1, v_max=4).count()  # the authors' CASS.py defaults
    25
    >>> ScheduleSpace(50, num_full=17, v_min=1, v_max=3).count()  # their shipped DiT schedule's settings
    9
"""

from procache_opt.space._dp import FLOPS_QUANTUM, Chooser
from procache_opt.space._space import ScheduleSpace

__all__ = ["FLOPS_QUANTUM", "Chooser", "ScheduleSpace"]
