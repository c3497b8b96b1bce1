"""Fine-tuning internals: chip sets and layouts, the chip cutter, metrics and the training loop.

The public entry points are :mod:`workflows.chips`, :mod:`workflows.finetune`
and :mod:`workflows.evaluate`.
"""
