"""Convert checkpoints between Hugging Face and Megatron-Core (same code as `ra3 convert`).

python tools/convert_checkpoint.py hf-to-mcore --hf HF_DIR --out MCORE_DIR [--tp 2 --pp 1]
python tools/convert_checkpoint.py mcore-to-hf --mcore MCORE_DIR --out HF_DIR
"""

import sys

from ra3_megatron.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
