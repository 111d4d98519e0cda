"""Durable outbox and dispatcher."""
