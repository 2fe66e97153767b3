"""stm-rl: Self-Attentive Associative Memory (Le, Tran & Venkatesh, ICML 2020) in PyTorch.

Only the memory core is exported here; the trainer, the command line and the supervised benchmarks
live in their own subpackages (``stm_rl.a3c``, ``stm_rl.cli``, ``stm_rl.supervised``), so importing
``stm_rl`` stays cheap and the import graph stays one-way (``agents`` depends on this core).
"""

from stm_rl.memory import SAM, STM, STMCell, STMState, outer_product_attention

__version__ = "0.1.0"
__all__ = ["SAM", "STM", "STMCell", "STMState", "outer_product_attention", "__version__"]
