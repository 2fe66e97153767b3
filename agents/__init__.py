"""Actor-critic agents for Pong: the LSTM baseline and the STM-augmented agent (paper section 3.4)."""

from agents.actor_critic import ActorCritic, AgentConfig, AgentState, build_agent, count_parameters
from agents.encoders import PaperEncoder, SmallEncoder, make_encoder
from agents.normalizer import FrameNormalizer

__all__ = ["ActorCritic", "AgentConfig", "AgentState", "FrameNormalizer", "PaperEncoder", "SmallEncoder", "build_agent",
           "count_parameters", "make_encoder"]
