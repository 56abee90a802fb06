"""``edgefleet``: the operator's command line, one module per command group.

- ``main``: the top-level app: keys, documents, the controller, tokens, audit, sim, demo;
- ``models``: ``edgefleet model …``; ``devices``: ``edgefleet devices …``;
  ``rollouts``: ``edgefleet rollout …`` — all over HTTP;
- ``common``: where the controller is, as whom, and how to print.
"""
