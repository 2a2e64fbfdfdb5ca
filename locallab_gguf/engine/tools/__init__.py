"""Tool calls and reasoning: how a chat template expresses tools, how the model's answer is
read back into calls, and the grammars that keep the calls well-formed."""
