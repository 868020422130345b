"""Fine-tuning LLaVA-OneVision on an FEID export (SEKE paper §3.3, §4.2).

Modules: `data` (export loading, chat template, tokenisation, collation),
`tiny` (a tiny randomly initialised base checkpoint for demos and tests),
`finetune` (TrainConfig and the training loop, alone or under accelerate),
`launch` (the `accelerate launch` command for several processes and its entry
point), `plan` (memory per GPU before launching), `generate` (batched greedy
inference with the training chat template). The package imports none of
them, so `import tasks.train` does not pull in torch.
"""

#: TrainConfig fields of the demo (`seke demo`): a tiny randomly initialised model trained for about a
#: minute on CPU. The paper's lr 1e-5 (meant for a pretrained 7B model) would not move it, so the demo
#: uses a larger one and enough epochs that ≥ 90% of its FEAB answers carry all three descriptions
#: (tests/tasks/test_train_demo.py). 6 epochs ended at a loss of ~1.2 on the demo's 177 FEID answers and
#: the model looped on the AU list (0 of 23 answers complete); 12 epochs reach ~0.7 and 23 of 23.
#: Real models keep TrainConfig's defaults.
DEMO_TRAIN_CONFIG = {"learning_rate": 5e-3, "epochs": 12, "batch_size": 4, "save_steps": 100, "warmup_ratio": 0.03}
