"""Property-based fuzzing of the spec grammar: random specs through every framework (`make fuzz`).

strategies.py   hypothesis strategies, one per spec section: valid specs only
case.py         a case: the spec as YAML data and the conformance run it gets
pipeline.py     a case through load, describe, render and the conformance runner; failing checks per family
shrink.py       a failing family reduced to a minimal spec that still fails the same way
campaign.py     `python -m conformance.fuzz`: batches, tiers, shards, reproduction files and the summary
known_bugs.py   bugs the strategies avoid until their fixes are merged
"""
