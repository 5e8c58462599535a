"""trainer: approved examples → a new LoRA adapter version (dataset, base model, SFT, gate, daemon, estimate).

Nothing is imported here on purpose: torch/transformers/TRL load only inside the modules that
need them, so `import trainer.config` stays cheap and the bot never pulls torch in.
"""
