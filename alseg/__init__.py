"""alseg: active learning for semantic segmentation on top of mmsegmentation.

Library only: no CLI code lives here (see ``alseg.commands``). Heavy imports (torch, mmseg)
happen inside the functions that need them so ``alseg --help`` stays fast.
"""

__version__ = "0.1.0"
