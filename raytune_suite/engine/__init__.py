"""Ray Tune: the searcher/scheduler registry, sound PBT, trial outcomes, the runner."""
