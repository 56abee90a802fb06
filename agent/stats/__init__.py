"""Live inference statistics and the probation verdict they feed.

- ``recorder``: ``StatsRecorder``, per-window statistics of one model version;
- ``probation``: the pure judge of a newly activated model;
- ``probation_watch``: the loop that asks the judge until it decides.
"""
