"""The parts of :func:`diffusion_curriculum.training.train_loop`, each doing one thing and testable alone.

* :mod:`.batches`: the seeded random streams, and the images and conditions of each step's batch
  (the global batch drawn on every rank, this rank's slice of it, horizontal flips).
* :mod:`.step`: one optimisation step (timesteps and noise, loss, backward, clipping, AdamW, EMA) and the
  gather of the whole batch's per-sample losses across data-parallel ranks.
* :mod:`.losslog`: loss per timestep bin and running loss between log rows, the history rows, and the
  divergence checks of the loss.
* :mod:`.checkpoint`: what a checkpoint holds, when it and the snapshots are written, and resuming from it.
* :mod:`.stopping`: when a run stops early (``stop_after``, a polled stop request agreed by every rank).
* :mod:`.progress`: the progress display and the throughput reading (for people, never for outputs).
"""
