"""Training: the run configurations (config), the pre-training and fine-tuning loops (pretrain, finetune, loop),
optimiser and schedule (optim), label-balanced crops (sampling), checkpoints and DDP under torchrun."""
