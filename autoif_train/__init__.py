"""autoif-train: the AutoIF method (arXiv 2406.13542) as an end-to-end post-training system.

Synthesize instruction-following data whose quality is checked by executing LLM-written verifier
functions in a sandbox, then train with SFT, offline DPO and iterative online DPO (TRL + DeepSpeed).
"""

__version__ = "0.1.0"
