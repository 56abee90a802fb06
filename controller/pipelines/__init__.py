"""Continuous delivery: channels, the pipelines that run through them, and the jobs table."""
