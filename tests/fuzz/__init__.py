"""Coverage-guided fuzz targets (atheris) for every parser that reads network bytes.

One module per target, ``fuzz_<target>.py``, each with a ``TestOneInput(data)`` that
asserts invariants and a ``__main__`` that hands it to atheris (libFuzzer flags pass
through). ``corpus/<target>/`` holds the committed seeds (``make_corpus.py`` writes
them), ``test_fuzz_targets.py`` replays them and fuzzes each target for a bounded
number of runs, and ``scripts/fuzz`` fuzzes for as long as asked.
"""
