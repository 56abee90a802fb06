"""The fleet's devices: who they are, what they should run, and their broker logins.

- ``enrollment``: one-time tokens, device identities and credentials, decommissioning;
- ``inventory``: the devices as the API and the dashboard show them;
- ``selectors``: labels and label selectors (pure);
- ``desired``: signs deployments and keeps each device's desired state;
- ``reconciler``: renews and republishes desired state;
- ``credentials`` and ``broker_auth``: MQTT passwords and ACLs for both brokers;
- ``gauges``: Prometheus gauges of the fleet, read at scrape time;
- ``tables`` and ``schemas``: what is stored, and what the API accepts and returns.
"""
