"""The Megatron-Core engine: model build from HF configs, CPU shims, conversion, trainer, checkpoints.

Importing this package does not import megatron; its modules do.
"""

import warnings

# Megatron-Core warns at import time about every missing optional accelerator (Apex, TE). Apex is
# never installed here on purpose, and TE only on GPUs; model.py refuses TE/FP8 requests that
# cannot be honoured, so these warnings carry no information for our users.
warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine and Apex) (is|are) not installed.*")
warnings.filterwarnings("ignore", message=r".*full scope is deprecated.*")
