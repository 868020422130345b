"""Entry point for the DeepSpeed tests: `tasks.train.launch` in CPU processes (gloo) under `accelerate launch --use_deepspeed`.

accelerate runs DeepSpeed on accelerators only: on CPU it sets up no process
group and counts one process. This script does beforehand what accelerate
does on GPUs — DeepSpeed's process group, then accelerate's process counts
from it — so the training code under test is the one GPUs run. DeepSpeed
itself is told to use its CPU accelerator (DS_ACCELERATOR=cpu, set by the test).
"""

from __future__ import annotations

import os
import sys

import deepspeed
import torch.distributed as dist
from accelerate import PartialState

from tasks.train.launch import main

if __name__ == "__main__":
    deepspeed.init_distributed(dist_backend="gloo")
    state = PartialState()
    state.num_processes, state.process_index = dist.get_world_size(), dist.get_rank()
    state.local_process_index = int(os.environ["LOCAL_RANK"])
    main(sys.argv[1:])
