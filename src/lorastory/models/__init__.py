"""Model families (Kolors, SDXL, SD1.5), tiny offline models, and LoRA files."""
