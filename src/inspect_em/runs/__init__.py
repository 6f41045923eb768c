"""Commands that run models end to end: extraction (``extract``), finetuning data (``datasets``),
LoRA finetuning (``finetune``), screening, steering sweeps (``sweep``) and the demo."""
