"""Rollouts of the router pool inside `sluice up`: rolling, blue-green and canary
(docs/deployment.md)."""
