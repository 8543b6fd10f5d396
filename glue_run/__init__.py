"""What run_glue_no_trainer.py needs besides training, one concept per module.

* ``errors``: the script's kinds of failure, their exit statuses, one-line warnings;
* ``settings``: checking the flags before anything is loaded, the adapter config they describe, and what
  they imply (``Resolved``);
* ``data``: GLUE (local .tsv or the Hub) and custom csv/json files, label ids, tokenising;
* ``batches``: the epoch order and each process's share of a batch;
* ``schedule``: the step plan and the learning-rate schedules;
* ``files``: writing a file whole (atomically) and reading torch files safely;
* ``manifest``: the list of what runs wrote in an output folder, the only things ever deleted;
* ``outdir``: claiming, checking, locking and preparing the output folder;
* ``checkpoints``: the training state, writing and resuming checkpoints; ``rng``: the RNG states in them;
* ``ivon_files``: IVON's state saved with an adapter; ``ivon_stats``: IVON's statistics for the log;
* ``outputs``: the log, run_config.json, the final outputs and the Hub.
"""
