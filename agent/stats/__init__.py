"""Live inference statistics and the probation verdict they feed.

- ``recorder``: ``StatsRecorder``, per-window statistics of one model version;
- ``latency``: latency buckets and the percentiles read from them;
- ``classes``: which output holds class probabilities, and what each row says;
- ``columns``: a batch of requests' arrays by tensor name, for one numpy pass each;
- ``telemetry``: a window as the protocol reports it;
- ``probation``: the pure judge of a newly activated model;
- ``probation_watch``: the loop that asks the judge until it decides.

Histogram bins, the classifier rule and PSI are ``tensors.profile``'s, shared with the
converter that wrote the reference profile.
"""
