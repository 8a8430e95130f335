"""``python tests/kill_after_checkpoint.py STEP train ...``: ``moore`` that SIGKILLs itself right after
writing the checkpoint of optimizer step STEP, a hard crash at the worst moment for resume tests.
The fault is injected here, in the test's launcher, not through a hook in the trainer."""

import os
import signal
import sys

from moore.cli import main
from moore.training.trainer import Trainer

kill_step = int(sys.argv.pop(1))
save = Trainer._save_checkpoint


def save_then_die(self, state, *args, **kwargs):
    save(self, state, *args, **kwargs)
    if state.global_step == kill_step:
        os.kill(os.getpid(), signal.SIGKILL)


Trainer._save_checkpoint = save_then_die
sys.exit(main())
