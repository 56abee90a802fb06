"""The device's link to its controller.

- ``mqtt``: the MQTT link, publishing through the outbox;
- ``outbox``: what must be published, on disk until the broker acknowledges it;
- ``reporting``: lifecycle events and the retained state the device reports;
- ``enroll``: trading a one-time token for the device's identity.
"""
