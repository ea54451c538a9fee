"""Row schemas (SFT `messages`, DPO `prompt/chosen/rejected`, online prompt rows with verifiers) and the pair rule."""
