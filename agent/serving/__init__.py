"""Serving models on the device.

- ``server``: ``ModelServer``, the in-process API: load, warm, swap, infer;
- ``host``: the model that serves, its statistics and the local API, for the daemon;
- ``codec``: the pure Open Inference Protocol codec: JSON bodies to arrays and back;
- ``http_api``: the Open Inference Protocol over HTTP on loopback;
- ``serve_local``: ``edgefleet-agent serve-local``, one model file without a controller.

Models are loaded through ``agent.backends`` (the runtime backends of ``tensors``).
"""
