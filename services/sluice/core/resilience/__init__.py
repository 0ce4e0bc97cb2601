"""Resilience primitives: circuit breaker, retry with backoff and budget, bulkhead.

Pure logic over an injected `Clock`, so every state change is tested without sleeping.
"""
