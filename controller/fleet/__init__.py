"""The fleet: enrolled devices, what they should run, and what they report.

- ``enrollment``: one-time tokens, device identities and credentials;
- ``desired``: signs deployments and keeps each device's desired state in the database;
- ``ingest``: applies device state, events (once per device and seq) and telemetry;
- ``bridge``: the controller's MQTT client: reads device topics, publishes desired state;
- ``engine``: drives the pure rollout planner over the database;
- ``reconciler``: renews and republishes desired state;
- ``webhooks``: delivers rollout events;
- ``service``: runs the bridge and the loops beside the HTTP server.
"""
