"""Monitoring after rollouts: alert rules on each release's pooled fleet health, whose
episodes become ``model_degraded`` / ``model_recovered`` webhooks (``alerts``)."""
