"""``torchrun ... tests/ddp_rank_weights.py CONFIG OUT``: ``moore train`` in every process, then each
rank writes the weights it ended with to OUT/rankN.safetensors, so a test can compare the replicas
(only rank 0 writes the run's own files)."""

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from moore.runconfig import load_run_config
from moore.training.trainer import Trainer

config, out = Path(sys.argv[1]), Path(sys.argv[2])
trainer = Trainer(load_run_config(config), progress=False, device="cpu")
trainer.run()
weights = {k: v.detach().contiguous() for k, v in trainer.model.adapted.adapter_state_dict().items()}
weights.update({f"head.{k}": v.contiguous() for k, v in trainer.model.heads.state_dict().items()})
out.mkdir(parents=True, exist_ok=True)
save_file(weights, str(out / f"rank{os.environ.get('RANK', '0')}.safetensors"))
