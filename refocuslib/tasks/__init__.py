"""Training tasks (``refocuslib.train.TrainTask`` subclasses) for each paper; one module per paper."""
