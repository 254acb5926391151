"""Evaluation: scorers that check generated images against their prompts (:mod:`.scorer`)."""
