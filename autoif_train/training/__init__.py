"""Training: AutoIF's iterative online DPO (rounds of sample -> score -> pair -> DPO) on TRL's DPOTrainer, GRPO on
TRL's GRPOTrainer with the same rewards, their schedules, durable round state and run reports."""
