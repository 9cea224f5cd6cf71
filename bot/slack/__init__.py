"""Penny's Slack edge: Block Kit rendering (``bot.slack.render``) and, later, the Bolt listeners.

Rendering is pure functions of data so it can be tested without Slack; listeners stay thin
(parse, call the answering service, render).
"""
