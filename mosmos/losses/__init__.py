"""The MOSMOS losses: image–report contrast L_irc and multi-label recognition L_mlr for pre-training
(pretrain), L_seg + lambda * L_pta and the reading of the pixel–tag maps for fine-tuning (finetune)."""
