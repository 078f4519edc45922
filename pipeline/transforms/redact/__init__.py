"""Redact transform: personal data and secrets masked, hashed or dropped before records leave the host."""
