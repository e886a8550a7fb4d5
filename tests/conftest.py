"""Test-session set-up shared by every test file."""
import os
import tempfile

# hypothesis keeps a cache (example database, source constants) under ./.hypothesis by default: keep it out of
# the repository (tests/test_properties.py is derandomised and needs no database)
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "refocuslib-hypothesis"))
