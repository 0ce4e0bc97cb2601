import logging

log = logging.getLogger(__name__)


def work() -> int:
    return 1


def bad() -> int:
    # ruleid: sluice-swallowed-exception
    try:
        return work()
    except Exception:
        return 0


def bad_too() -> None:
    # ruleid: sluice-swallowed-exception
    try:
        work()
    except Exception as err:
        print(type(err))


def good_logged() -> int:
    # ok: sluice-swallowed-exception
    try:
        return work()
    except Exception:
        log.exception("work failed")
        return 0


def good_raised() -> int:
    # ok: sluice-swallowed-exception
    try:
        return work()
    except Exception as err:
        if isinstance(err, KeyError):
            raise RuntimeError("no such thing") from err
        raise


def good_specific() -> int:
    # ok: sluice-swallowed-exception
    try:
        return work()
    except ValueError:
        return 0


class Holder:
    error: BaseException | None = None

    def run(self) -> None:
        # ok: sluice-swallowed-exception
        try:
            work()
        except BaseException as error:
            self.error = error
