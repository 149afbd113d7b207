"""Contrastive fine-tuning of CLIP on captioned remote-sensing images.

`python -m cliprs_tools.finetune --help` for the command. Modules: `settings` (every option),
`trainer` (the loop, checkpoints, resume), `data` (seeded batches and samples), `augment`
(image augmentation, caption hooks, back-translation). Nothing is imported here, so the command
can settle Hugging Face's offline mode before `transformers` loads.
"""
