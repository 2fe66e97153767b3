"""Supervised memory benchmarks of the SAM paper (``python -m stm_rl.supervised``): tasks, models, training.

See ``docs/supervised.md`` and ``../shared/spec/SUPERVISED.md``. Submodules: ``tasks`` (one module per task),
``models`` (input encoders and sequence cores behind a registry), ``config`` (dataclass + presets), ``train``
(the loop, evaluation, checkpoints).
"""
