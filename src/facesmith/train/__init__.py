"""`facesmith train`: fine-tune (full or LoRA) or train from a preset, Kohya-grade, on Accelerate.

Modules, one idea each: config (TrainConfig), dataset (manifest, buckets, batch order), cache (latents and text states), model (what learns, fit check), presets
(from-scratch models), objective (noise, targets, min-SNR), optim (optimizers, LR schedules),
checkpoint (the TrainState and its atomic save/resume), sampling (prompt files, grids), export (diffusers, single file,
Kohya LoRA), trainer (the loop, `run_train`, `read_result`) and launch (`--num-processes`, launching only). Kohya's caption ops are
`facesmith.data.caption_ops`'s.
"""
