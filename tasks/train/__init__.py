"""Fine-tuning LLaVA-OneVision on an FEID export (SEKE paper §3.3, §4.2).

Modules: `data` (export loading, chat template, tokenisation, collation),
`tiny` (a tiny randomly initialised base checkpoint for demos and tests),
`finetune` (TrainConfig and the training loop), `generate` (batched greedy
inference with the training chat template). The package imports none of
them, so `import tasks.train` does not pull in torch.
"""
