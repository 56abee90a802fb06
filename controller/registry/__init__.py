"""The model registry: uploads, versions and variants, releases, artifacts.

- ``models``: upload checks, versions and variants (converter jobs);
- ``releases``: signing exactly the artifact that was checked;
- ``jobs``: converters run as subprocesses with limits;
- ``uploads`` and ``validation_set``: streamed uploads and validation sets checked cheaply;
- ``artifact_store``: content-addressed files;
- ``tables`` and ``schemas``: what is stored, and what the API accepts and returns.
"""
