"""Training: folds (sample-level CV), batches (label masking, padding, pools), state
(optimizer + TrainState), loop (train/eval steps, checkpointed per-fold loop), sharding
(data parallelism over a "data" mesh axis). Entry point: ``python -m asign_jax.train``."""
