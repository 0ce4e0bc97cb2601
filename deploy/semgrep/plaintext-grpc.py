import grpc


def bad(target: str) -> None:
    # ruleid: sluice-plaintext-grpc-channel
    channel = grpc.aio.insecure_channel(target)
    # ruleid: sluice-plaintext-grpc-channel
    with grpc.insecure_channel(target, options=()) as sync_channel:
        print(channel, sync_channel)


def good(target: str, tls: object | None, credentials: grpc.ChannelCredentials) -> None:
    channel = (
        # ok: sluice-plaintext-grpc-channel
        grpc.aio.insecure_channel(target)
        if tls is None
        else grpc.aio.secure_channel(target, credentials)
    )
    # ok: sluice-plaintext-grpc-channel
    sync_channel = grpc.insecure_channel(target) if tls is None else grpc.secure_channel(target, credentials)
    # ok: sluice-plaintext-grpc-channel
    secure = grpc.aio.secure_channel(target, credentials)
    print(channel, sync_channel, secure)


def probe(target: str, tls: bytes | None) -> object:
    if tls is None:
        # ok: sluice-plaintext-grpc-channel
        channel = grpc.insecure_channel(target)
    else:
        credentials = grpc.ssl_channel_credentials(tls)
        channel = grpc.secure_channel(target, credentials)
    return channel


def plain_only(target: str, tls: bytes | None) -> object:
    if tls is None:
        # ruleid: sluice-plaintext-grpc-channel
        channel = grpc.insecure_channel(target)
    else:
        channel = None
    return channel
