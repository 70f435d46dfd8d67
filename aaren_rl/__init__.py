"""aaren-rl: sequence-model agents that run in constant memory.

Aaren ("Attention as an RNN", Feng et al. 2024) is softmax attention with a learned query:
it trains in parallel with a prefix scan and runs as an RNN with a fixed-size state.
"""

__version__ = "0.1.0"
