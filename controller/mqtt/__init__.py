"""The controller's side of MQTT: the bridge, what devices report, the embedded broker.

- ``bridge``: the controller's MQTT client — reads device topics, publishes desired state;
- ``ingest``: decodes device messages and stores state, events and telemetry;
- ``telemetry``: telemetry windows in the database (batched writes, downsampling);
- ``metrics``: the bridge's Prometheus metrics;
- ``embedded_broker``: amqtt, for a controller that runs its own broker.
"""
