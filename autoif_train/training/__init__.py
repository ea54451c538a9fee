"""Training: AutoIF's iterative online DPO (rounds of sample -> score -> pair -> DPO) on TRL's DPOTrainer."""
