"""Reads files, read by both programs: the manager's account and the agent's statistics."""
