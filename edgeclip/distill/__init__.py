"""Distillation stage (the ``distill`` extra): train small CLIP students from a teacher.

Needs torch and transformers; nothing in ``edgeclip`` imports this package. Entry point:
``python -m edgeclip.distill`` (see ``cli.main``).
"""
