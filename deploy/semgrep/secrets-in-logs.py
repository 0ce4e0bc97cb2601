import logging

log = logging.getLogger(__name__)


def bad(api_key: str, headers: dict[str, str], settings: object) -> None:
    # ruleid: sluice-secret-in-log
    log.info("request with key %s", api_key)
    # ruleid: sluice-secret-in-log
    log.warning(f"rejected {api_key}")
    # ruleid: sluice-secret-in-log
    logging.error("upstream said no: %s", settings.upstream_secret)
    authorization = headers["authorization"]
    # ruleid: sluice-secret-in-log
    log.debug("header: %r", authorization)
    # ruleid: sluice-secret-in-exception
    raise ValueError(f"bad key {api_key}")


def good(api_key_id: str, key_name: str, api_key: str) -> dict[str, str]:
    # ok: sluice-secret-in-log
    log.info("request with key id %s (%s)", api_key_id, key_name)
    # ok: sluice-secret-in-log
    log.info("key accepted")
    # ok: sluice-secret-in-exception
    if not api_key:
        raise ValueError("no key given")
    # ok: sluice-secret-in-log
    return {"authorization": f"Bearer {api_key}"}


SECRET_BYTES = 32


def short(path: str) -> None:
    # ok: sluice-secret-in-exception
    raise ValueError(f"{path}: shorter than {SECRET_BYTES} bytes")
