"""Paired training data (input plane + DPM → target) for each paper, simulated on the fly; one module per paper."""
