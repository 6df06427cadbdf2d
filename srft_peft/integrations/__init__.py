"""Training integrations: accelerate (`srft_peft.integrations.accelerate`), transformers.Trainer
(`srft_peft.integrations.transformers`) and peft adapters (`srft_peft.integrations.peft`).

Each submodule imports its library only when it is imported itself; see ``docs/training.md``.
"""
