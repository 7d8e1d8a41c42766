"""Runnable scenarios (`mlmesh scenario ...`): the logic that is not command-line plumbing.

- `metrics`: precision, recall, F1 and ROC AUC of a binary classifier's scores.
- `train_failures`: the train-failures scenario's settings, held-out set and bookkeeping.
- `stream`: a thread that streams a simulated fleet into ingest at a paced rate.
"""
