"""A tiny Transformer language model with MoE feed-forward sublayers, every backward by hand (MATH.md §15).

- embedding.py: Embedding (token ids -> vectors, backward a scatter-add), PositionEmbedding (learned).
- attention.py: CausalSelfAttention (multi-head, causal mask).
- blocks.py: DenseFeedForward (GPT-2's MLP), MoEFeedForward (any numpy_moe.moe.MoE on the tokens, with
  token masks, sequence lengths and hash keys), TransformerBlock (pre-LN).
- lm.py: TransformerLM (tied or untied output projection; next-token cross-entropy over real tokens).
"""
from .attention import CausalSelfAttention
from .blocks import DenseFeedForward, MoEFeedForward, TransformerBlock
from .embedding import Embedding, PositionEmbedding
from .lm import TransformerLM

__all__ = ["CausalSelfAttention", "DenseFeedForward", "Embedding", "MoEFeedForward", "PositionEmbedding",
           "TransformerBlock", "TransformerLM"]
