"""The edgefleet controller: registry, signer, rollouts and the operator CLI."""

__version__ = "0.1.0"
