"""Experiments of the training room (not shipped; results go into model cards)."""
