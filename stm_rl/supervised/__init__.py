"""Supervised memory benchmarks of the SAM paper (``stm-rl supervised``, also ``python -m stm_rl.supervised``):
tasks, models, training.

See ``docs/supervised.md`` and ``../shared/spec/SUPERVISED.md``. Submodules: ``tasks`` (one module per task),
``models`` (input encoders and sequence cores behind a registry, each with its typed ``Options`` and presets),
``config`` (frozen config dataclasses, the presets as data, the resume rule), ``train`` (the loop, evaluation,
checkpoints, summary), ``command`` (the flags, generated from the config dataclasses, and the command). The run
directory, run lock, errors, exit codes and resume comparison are those of the RL side (``stm_rl.run_dir``,
``stm_rl.conventions``, ``stm_rl.config_cli``).
"""
