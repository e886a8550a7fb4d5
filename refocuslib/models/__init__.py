"""Networks. Shared blocks live in :mod:`refocuslib.models.blocks`; one module per paper."""
