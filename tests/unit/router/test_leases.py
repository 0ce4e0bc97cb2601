"""The router's book of leased limiter permits (router/leases.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from sluice.router.leases import LeaseBook, LeaseKey, entry_bytes
from tests.support import FakeClock

KEY: LeaseKey = ("k1", "acme", "", "/sluice.router.v1.RouterService/Generate", "default")
OTHER: LeaseKey = ("k1", "acme", "u2", "/sluice.router.v1.RouterService/Generate", "default")


def granted_book(clock: FakeClock, permits: int = 3, ttl_ms: int = 1000) -> LeaseBook:
    book = LeaseBook(clock, ask=8)
    assert book.ask_for(KEY) == 0  # first sight of the subject
    assert book.ask_for(KEY) == 8
    book.granted(KEY, permits, ttl_ms, sent_at=clock.monotonic())
    return book


def test_a_subject_is_asked_for_only_from_its_second_request() -> None:
    book = LeaseBook(FakeClock(), ask=8)
    assert not book.take(KEY)
    assert book.ask_for(KEY) == 0
    assert book.ask_for(KEY) == 8


def test_each_permit_is_used_once_then_the_limiter_is_asked_again() -> None:
    clock = FakeClock()
    book = granted_book(clock, permits=3)
    assert [book.take(KEY) for _ in range(4)] == [True, True, True, False]
    assert book.ask_for(KEY) == 8


def test_permits_lapse_at_the_ttl_counted_from_when_the_ask_was_sent() -> None:
    clock = FakeClock()
    book = LeaseBook(clock, ask=8)
    book.ask_for(KEY)
    book.ask_for(KEY)
    sent_at = clock.monotonic()
    clock.advance(0.3)  # the answer took 300 ms to arrive
    book.granted(KEY, 5, ttl_ms=1000, sent_at=sent_at)
    clock.advance(0.69)
    assert book.take(KEY)
    clock.advance(0.01)  # 1.0 s after sending: the limiter's ttl may be over
    assert not book.take(KEY)
    assert not book.take(KEY)


def test_one_ask_in_flight_per_subject() -> None:
    book = LeaseBook(FakeClock(), ask=8)
    book.ask_for(KEY)
    assert book.ask_for(KEY) == 8
    assert book.ask_for(KEY) == 0  # the first ask has not been answered
    book.refused(KEY)
    assert book.ask_for(KEY) == 8


def test_a_refused_or_empty_grant_admits_nothing() -> None:
    clock = FakeClock()
    book = granted_book(clock, permits=0)
    assert not book.take(KEY)
    book.ask_for(KEY)
    book.granted(KEY, 4, ttl_ms=0, sent_at=clock.monotonic())
    assert not book.take(KEY)


def test_a_fresh_lease_replaces_the_rest_of_the_old_one() -> None:
    # Merging would let old permits live past their own ttl.
    clock = FakeClock()
    book = granted_book(clock, permits=5, ttl_ms=1000)
    assert book.take(KEY)
    book.ask_for(KEY)
    book.granted(KEY, 1, ttl_ms=1000, sent_at=clock.monotonic())
    assert [book.take(KEY) for _ in range(2)] == [True, False]


def test_subjects_do_not_share_permits() -> None:
    clock = FakeClock()
    book = granted_book(clock, permits=5)
    assert not book.take(OTHER)
    assert book.take(KEY)


def test_the_book_remembers_a_bounded_number_of_subjects() -> None:
    clock = FakeClock()
    book = LeaseBook(clock, ask=8, max_subjects=2)
    book.ask_for(KEY)
    book.ask_for(KEY)
    book.granted(KEY, 5, ttl_ms=1000, sent_at=clock.monotonic())
    for user in ("a", "b"):  # callers varying `user` per request
        assert book.ask_for(("k1", "acme", user, "/x", "default")) == 0
    assert not book.take(KEY)  # the oldest subject was forgotten
    assert book.ask_for(KEY) == 0  # and counts as new again
    gone: LeaseKey = ("gone", "", "", "", "")
    book.granted(gone, 5, ttl_ms=1000, sent_at=clock.monotonic())  # evicted while asking
    assert not book.take(gone)


def test_asking_is_off_with_a_zero_ask() -> None:
    book = LeaseBook(FakeClock(), ask=0)
    assert not book.enabled
    assert book.ask_for(KEY) == 0
    assert book.ask_for(KEY) == 0


def test_the_book_is_bounded_by_bytes_whatever_the_callers_put_in_a_key() -> None:
    book = LeaseBook(FakeClock(), ask=10, max_subjects=10_000, max_bytes=100_000)
    keys = [("key", "tenant", "u" * 9_000 + str(i), "generate", "default") for i in range(50)]
    for key in keys:
        book.ask_for(key)
        assert book.bytes_used <= book.max_bytes
    # ~9.5 KB a subject: about ten fit, far below the subject count bound.
    remembered = [key for key in keys if key in book]
    assert len(remembered) == len(book)
    assert 5 <= len(remembered) <= 11
    assert remembered == keys[-len(remembered) :]  # the newest
    assert book.bytes_used == sum(entry_bytes(key) for key in remembered)
    # A key bigger than the whole bound is never remembered, so never asked for.
    huge = ("key", "tenant", "u" * 200_000, "generate", "default")
    assert book.ask_for(huge) == 0
    assert book.ask_for(huge) == 0
    assert huge not in book


def test_the_books_bound_and_use_are_reported_when_given_a_registry() -> None:
    registry = CollectorRegistry()
    book = LeaseBook(FakeClock(), ask=10, max_bytes=2_000_000, registry=registry)
    book.ask_for(KEY)
    assert registry.get_sample_value("sluice_router_lease_book_bound_bytes") == 2_000_000
    assert registry.get_sample_value("sluice_router_lease_book_used_bytes") == entry_bytes(KEY)
