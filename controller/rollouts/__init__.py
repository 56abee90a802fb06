"""Rollouts: how a release reaches the fleet, wave by wave, and how it is stopped.

How a rollout advances, in reading order:

- ``core``: the pure planner — policy, waves, gates; state and observations in, the next
  state and actions out (no I/O, no clock; checked by import-linter);
- ``records``: create a rollout, queue an operator command, describe one for the API;
- ``engine``: one step of the rollout loop — load, observe the fleet, plan, store, sign;
- ``health``: what the telemetry of a wave (and of its control group) says;
- ``codec``: policies and planner states as JSON for the database;
- ``webhooks``: rollout events delivered at least once;
- ``tables`` and ``schemas``: what is stored, and what the API returns.
"""
