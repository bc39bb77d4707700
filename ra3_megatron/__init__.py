"""ra3_megatron: RA3 (Reasoning as Action Abstractions) mid-training for NVIDIA Megatron-Core.

Importing the package is cheap: it never imports megatron, vllm, transformer_engine or
torch.distributed. Heavy backends are imported by the modules that need them, when used.
"""

__version__ = "0.1.0"
