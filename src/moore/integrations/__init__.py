"""Bridges to the rest of the ecosystem: transformers' Trainer and lm-evaluation-harness."""
