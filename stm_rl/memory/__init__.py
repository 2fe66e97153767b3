"""The memory core: outer-product attention, the SAM operator and the STM cell (torch only)."""

from stm_rl.memory.attention import SAM, outer_product_attention, outer_product_scores
from stm_rl.memory.stm import STM, STMCell, STMState

__all__ = ["SAM", "STM", "STMCell", "STMState", "outer_product_attention", "outer_product_scores"]
