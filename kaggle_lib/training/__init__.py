"""Training stages: supervised fine-tuning (LoRA or full) and GRPO, both on Tunix."""
