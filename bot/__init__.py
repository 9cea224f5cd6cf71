"""Penny's Slack bot, docs retrieval and the penny CLI."""
