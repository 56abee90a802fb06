"""Attacks found in the security review (issue 16), each a test named after it."""
