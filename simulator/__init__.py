"""The fleet simulator: many real agents in one process, against a real controller and
broker, with device profiles, workloads, injected faults, and a report.

It imports ``agent`` and ``protocol`` and reaches the controller only over HTTP and MQTT
(ARCHITECTURE.md §2).
"""
