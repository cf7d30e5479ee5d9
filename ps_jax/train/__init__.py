"""Training of the synthesizer adapter (cache mapper + LoRA) on fixed-text branches."""
