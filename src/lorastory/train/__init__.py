"""The training stage: LoRA on the UNet (optionally the text encoder) with accelerate."""
