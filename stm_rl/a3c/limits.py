"""Bounds on a training run's settings beyond what each config dataclass checks on its own.

They catch typing mistakes before anything starts (a seed the RNGs cannot take, a budget of 10^30 frames,
a frame skip longer than a Pong point, a thousand worker processes on two cores), with one-line errors
that name the flag. ``stm-rl train``, the sweep and :class:`stm_rl.a3c.trainer.Trainer` apply them.
"""

from __future__ import annotations

import os

from stm_rl.a3c.config import TrainConfig
from stm_rl.run_dir import StmRlError

MAX_WORKERS_PER_CORE = 4
"""More worker processes than this per CPU core only add memory and switching, never speed."""
MAX_FRAMES = 10**12
"""Larger budgets are typing mistakes (10^12 frames is years on any machine)."""
MAX_FRAME_SKIP = 1000
"""A frame skip above this is a handful of agent steps per Pong point: not a game any agent can play."""
MAX_SEED = 2**31 - 1 - 10**7
"""Seeds are offset per worker, segment and evaluator; numpy and ALE take seeds below 2^31 (room for the offsets)."""


def validate_for_training(config: TrainConfig) -> None:
    """The limits a run must respect before anything starts; one-line errors naming the flag."""
    run, env = config.run, config.env
    cores = os.cpu_count() or 1
    if not 0 <= run.seed <= MAX_SEED:
        raise StmRlError(f"--seed must be in 0..{MAX_SEED:,}, got {run.seed}")
    if run.frames > MAX_FRAMES:
        raise StmRlError(f"--frames {run.frames:.3g} is beyond any run's reach (at most {MAX_FRAMES:.0e}); "
                         "budgets are emulator frames, e.g. 20M")
    if run.agent_steps > MAX_FRAMES:
        raise StmRlError(f"--agent-steps {run.agent_steps:.3g} is beyond any run's reach (at most {MAX_FRAMES:.0e}); "
                         "e.g. 4M")
    if env.frame_skip > MAX_FRAME_SKIP:
        raise StmRlError(f"--frame-skip must be at most {MAX_FRAME_SKIP} (the paper uses 0, 4, 16, 32), "
                         f"got {env.frame_skip}")
    if run.workers > MAX_WORKERS_PER_CORE * cores:
        raise StmRlError(f"--workers {run.workers} is more than {MAX_WORKERS_PER_CORE} per CPU core ({cores} cores): "
                         f"each worker is a process with its own model and emulator; use at most "
                         f"{MAX_WORKERS_PER_CORE * cores} (one per core is usually fastest)")
