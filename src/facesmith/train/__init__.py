"""`facesmith train`: fine-tune (full, LoRA/LoHa/LoKr/DoRA, textual inversion) or train from a preset, on Accelerate.

Modules, one idea each: config (TrainConfig), dataset (manifest, buckets, batch order), cache (latents
and text states), conditioning (text states and SDXL's size/crop ids for the UNet), model (what learns,
fit check), blocks (LoRA block weights), embedding (textual inversion's tokens), presets (from-scratch
models), objective (noise, targets, losses), masks (masked loss), prior (prior preservation), optim
(optimizers, LR schedules), checkpoint (atomic folders, checked loads), state (the TrainState and its
save/resume pair), validation (the held-out loss), validation_prompts (a prompt set's faithfulness),
sampling (prompt files, grids), export (diffusers, single file, Kohya/LyCORIS files, embeddings),
kohya_file (their names and metadata), watch (avr_loss, plain progress), process (the Accelerator,
uninterruptible steps), trainer (the loop, `run_train`), result (`read_result`) and launch
(`--num-processes`, launching only). Kohya's caption ops are `facesmith.data.caption_ops`'s.
"""
