"""What every study run imports, imported once by the study's forkserver (``run_study``): each run
is forked from there with torch, transformers' model code and moore already loaded, instead of
paying those imports itself (about half the time of a run of a ``-quick`` suite)."""
# ruff: noqa: F401  (imported for their side effect: loaded once, before the runs fork)

import warnings

# a run forked from here imports the parent's main module again; under `python -m moore.cli` that is
# moore.cli, loaded here already, which runpy warns about (harmless: its main() is behind __name__)
warnings.filterwarnings("ignore", message="'moore.cli' found in sys.modules", category=RuntimeWarning)

import scipy.stats  # the report's tests and the metrics
import sklearn.metrics
import torch
import transformers.modeling_utils  # the bulk of transformers' import time
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

import moore.bench.study
import moore.cli
import moore.training
