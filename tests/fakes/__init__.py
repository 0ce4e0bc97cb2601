"""Local stand-ins for paid LLM APIs, speaking each provider's published wire format.

``openai_fake`` serves OpenAI Chat Completions (``POST /v1/chat/completions``,
``GET /v1/models``); ``anthropic_fake`` serves Anthropic Messages (``POST /v1/messages``).
Both pace tokens, count usage and inject faults as ``FakeBehaviour`` says; tests drive
them with the official SDKs to prove the format, and the load tests use them as the
upstream of the provider service.
"""

from tests.fakes.common import FAULTS, FakeBehaviour, FakeServer

__all__ = ["FAULTS", "FakeBehaviour", "FakeServer"]
