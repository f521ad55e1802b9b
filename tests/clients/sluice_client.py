#!/usr/bin/env python3
"""An independent gRPC client for sluice's servers, for tests (see README.md here).

Generates Python stubs from the repository's proto/ with grpc_tools.protoc (cached under the
system temp dir, keyed by a hash of the .proto files), then runs one call and prints one JSON
line per received message, flushing after each. An RPC error is printed as the last line,
{"error": "<StatusCode name>", "details": "..."}, with exit status 0.

Needs only grpcio, grpcio-tools (and the protobuf they bring) and the standard library:
scripts/services installs them and prints SLUICE_PYTHON, the Python to run this with.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
PROTO_FILES = (
    "org/signal/account_stream.proto",
    "sluice/v1/messages.proto",
    "sluice/v1/views.proto",
)


def emit(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


# --- stubs -------------------------------------------------------------------------------


def stubs_dir(proto_root, stub_dir):
    """The directory holding the generated modules; generated once per proto contents."""
    import grpc_tools
    from grpc_tools import protoc

    digest = hashlib.sha256()
    digest.update(("grpcio-tools " + getattr(grpc_tools, "__version__", "?")).encode())
    try:
        from importlib.metadata import version

        digest.update(version("grpcio-tools").encode())
    except Exception:  # noqa: BLE001 - the version only sharpens the key
        pass
    for name in PROTO_FILES:
        digest.update(b"\0" + name.encode() + b"\0")
        digest.update((proto_root / name).read_bytes())
    base = Path(stub_dir) if stub_dir else Path(tempfile.gettempdir()) / "sluice-grpc-stubs"
    final = base / digest.hexdigest()[:24]
    if final.is_dir():
        return final
    base.mkdir(parents=True, exist_ok=True)
    # Generate aside, then rename into place: the rename is atomic, so a directory under its
    # final name is always complete, and of several concurrent clients one rename wins.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
    try:
        include = Path(protoc.__file__).resolve().parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(proto_root / name) for name in PROTO_FILES],
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"error: grpc_tools.protoc failed on {proto_root}")
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_stubs(args):
    path = stubs_dir(Path(args.proto_dir) if args.proto_dir else PROTO_ROOT, args.stub_dir)
    sys.path.insert(0, str(path))
    return path


# --- calls -------------------------------------------------------------------------------


def rpc_error(err):
    import grpc

    code = err.code() if callable(getattr(err, "code", None)) else None
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    emit({"error": name, "details": details or ""})


def channel(addr, slow=False, ca=None):
    import grpc

    # A slow reader keeps the transport's receive window at its 64 KiB start (no BDP
    # probing), so what backs up is the server's per-client buffer, as with a real slow
    # client on a slow link, rather than megabytes absorbed by this process.
    options = [("grpc.http2.bdp_probe", 0)] if slow else []
    if ca:
        with open(ca, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        return grpc.secure_channel(addr, credentials, options=options)
    return grpc.insecure_channel(addr, options=options)


def stream(call, show, args, is_current=lambda _m: False):
    """Reads a server stream, printing each message; stops as the flags say."""
    import grpc

    count = 0
    try:
        for message in call:
            emit(show(message))
            count += 1
            if args.messages is not None and count >= args.messages:
                break
            if args.until_current and is_current(message):
                break
            if args.stall_after is not None and count == args.stall_after:
                # Not reading lets grpc's buffers and the HTTP/2 window fill: the server sees
                # a slow client.
                time.sleep(args.stall_secs)
        else:
            emit({"end": True})
        call.cancel()
    except grpc.RpcError as err:
        rpc_error(err)


def cmd_accounts(args):
    load_stubs(args)
    from org.signal import account_stream_pb2 as pb
    from org.signal import account_stream_pb2_grpc as pb_grpc

    request = pb.AccountDataRequest(
        shard=pb.Shard(start=bytes.fromhex(args.shard_start), limit=bytes.fromhex(args.shard_limit)),
        last_continuation_token=bytes.fromhex(args.token),
    )
    metadata = [("x-signal-auth-token", args.auth)] if args.auth is not None else None

    def show(m):
        return {
            "clear_all": m.clear_all,
            "records": [
                {"e164": r.e164, "aci": r.aci.hex(), "pni": r.pni.hex(), "uak": r.uak.hex()}
                for r in m.records
            ],
            "token": m.continuation_token.hex(),
            "dataset_current": m.dataset_current,
        }

    with channel(args.addr, slow=getattr(args, "stall_after", None) is not None, ca=getattr(args, "ca", None)) as ch:
        call = pb_grpc.AccountStreamServiceStub(ch).StreamAccountData(
            request, metadata=metadata, timeout=args.timeout
        )
        stream(call, show, args, lambda m: m.dataset_current)


def cmd_subscribe(args):
    load_stubs(args)
    from sluice.v1 import views_pb2 as pb
    from sluice.v1 import views_pb2_grpc as pb_grpc

    request = pb.SubscribeRequest(
        output=args.output, token=bytes.fromhex(args.token), partition=args.partition
    )
    metadata = [("x-sluice-auth-token", args.auth)] if args.auth is not None else None

    def show(m):
        return {
            "reset": m.reset,
            "changes": [
                {"key": c.key, "value": c.value, "diff": c.diff, "time": c.time}
                for c in m.changes
            ],
            "frontier": m.frontier,
            "token": m.token.hex(),
            "current": m.current,
        }

    with channel(args.addr, slow=getattr(args, "stall_after", None) is not None, ca=getattr(args, "ca", None)) as ch:
        call = pb_grpc.ViewsStub(ch).Subscribe(request, metadata=metadata, timeout=args.timeout)
        stream(call, show, args, lambda m: m.current)


def message_json(m):
    out = {
        "id": m.id,
        "timestamp": m.timestamp,
        "deleted": m.deleted,
        "from": getattr(m, "from"),
        "to": m.to,
        "created": m.created,
    }
    if m.HasField("edited"):
        out["edited"] = m.edited
    out.update({"read": m.read, "text": m.text, "files": list(m.files)})
    return out


def page_json(page):
    return {"messages": [message_json(m) for m in page.messages]}


def bearer(jwt):
    return [("authorization", f"Bearer {jwt}")]


def cmd_changes(args):
    load_stubs(args)
    import grpc
    from sluice.v1 import messages_pb2 as pb
    from sluice.v1 import messages_pb2_grpc as pb_grpc

    with channel(args.addr, slow=getattr(args, "stall_after", None) is not None, ca=getattr(args, "ca", None)) as ch:
        try:
            page = pb_grpc.MessagesStub(ch).Changes(
                pb.ChangesRequest(after=args.after, limit=args.limit),
                metadata=bearer(args.jwt),
                timeout=args.timeout,
            )
        except grpc.RpcError as err:
            rpc_error(err)
            return
        emit(page_json(page))


def cmd_sync(args):
    load_stubs(args)
    import grpc
    from sluice.v1 import messages_pb2 as pb
    from sluice.v1 import messages_pb2_grpc as pb_grpc

    state = {}
    after = 0
    last_new = time.monotonic()
    printed_empty = False
    poll = min(0.1, args.until_idle) if args.until_idle > 0 else 0
    with channel(args.addr, slow=getattr(args, "stall_after", None) is not None, ca=getattr(args, "ca", None)) as ch:
        stub = pb_grpc.MessagesStub(ch)
        while True:
            try:
                page = stub.Changes(
                    pb.ChangesRequest(after=after, limit=args.limit),
                    metadata=bearer(args.jwt),
                    timeout=args.timeout,
                )
            except grpc.RpcError as err:
                rpc_error(err)
                return
            if page.messages:
                emit(page_json(page))
                printed_empty = False
                last_new = time.monotonic()
                for m in page.messages:
                    after = max(after, m.timestamp)
                    held = state.get(m.id)
                    if held is None or m.timestamp >= held["timestamp"]:
                        state[m.id] = message_json(m)
                continue
            if not printed_empty:  # a run of empty polls is printed once
                emit(page_json(page))
                printed_empty = True
            if time.monotonic() - last_new >= args.until_idle:
                break
            time.sleep(poll)
    emit({"final": state})


def cmd_watch(args):
    load_stubs(args)
    from sluice.v1 import messages_pb2 as pb
    from sluice.v1 import messages_pb2_grpc as pb_grpc

    with channel(args.addr, slow=getattr(args, "stall_after", None) is not None, ca=getattr(args, "ca", None)) as ch:
        call = pb_grpc.MessagesStub(ch).Watch(
            pb.WatchRequest(after=args.after), metadata=bearer(args.jwt), timeout=args.timeout
        )
        stream(call, page_json, args)


def cmd_stubs(args):
    print(load_stubs(args), flush=True)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cmd_jwt(args):
    now = int(time.time())
    claims = {"sub": args.sub, "iat": now}
    if args.exp_in is not None:
        claims["exp"] = now + args.exp_in
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{head}.{body}".encode()
    signature = hmac.new(args.secret.encode(), signing_input, hashlib.sha256).digest()
    print(f"{head}.{body}.{b64url(signature)}", flush=True)


# --- command line ------------------------------------------------------------------------


def hex_arg(text):
    bytes.fromhex(text)
    return text


def hex32_arg(text):
    if text and len(bytes.fromhex(text)) != 16:
        raise argparse.ArgumentTypeError("expected 32 hex digits (16 bytes) or empty")
    return text


def main(argv=None):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--stub-dir", help="cache dir for generated stubs (default: system temp)")
    common.add_argument("--proto-dir", help=f"proto root (default: {PROTO_ROOT})")

    call = argparse.ArgumentParser(add_help=False, parents=[common])
    call.add_argument("--addr", required=True, help="HOST:PORT")
    call.add_argument("--timeout", type=float, help="deadline of the whole call, seconds")
    call.add_argument("--ca", help="TLS: trust this PEM certificate (default: plain text)")

    streaming = argparse.ArgumentParser(add_help=False, parents=[call])
    streaming.add_argument("--messages", type=int, help="stop after N messages")
    streaming.add_argument("--stall-after", type=int, help="after N messages stop reading...")
    streaming.add_argument("--stall-secs", type=float, default=0.0, help="...for S seconds")

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("accounts", parents=[streaming], help="org.signal.AccountStreamService")
    p.add_argument("--auth", help="x-signal-auth-token metadata")
    p.add_argument("--shard-start", type=hex32_arg, default="")
    p.add_argument("--shard-limit", type=hex32_arg, default="")
    p.add_argument("--token", type=hex_arg, default="", help="last_continuation_token, hex")
    p.add_argument("--until-current", action="store_true", help="stop after dataset_current")
    p.set_defaults(func=cmd_accounts)

    p = sub.add_parser("subscribe", parents=[streaming], help="sluice.v1.Views/Subscribe")
    p.add_argument("--output", required=True)
    p.add_argument("--auth", help="x-sluice-auth-token metadata")
    p.add_argument("--token", type=hex_arg, default="", help="resume token, hex")
    p.add_argument("--partition", default="", help="the partition as JSON text")
    p.add_argument("--until-current", action="store_true", help="stop after current")
    p.set_defaults(func=cmd_subscribe)

    p = sub.add_parser("changes", parents=[call], help="sluice.v1.Messages/Changes, one page")
    p.add_argument("--jwt", required=True)
    p.add_argument("--after", type=int, required=True)
    p.add_argument("--limit", type=int, default=0)
    p.set_defaults(func=cmd_changes)

    p = sub.add_parser("sync", parents=[call], help="page Changes until idle, print merged state")
    p.add_argument("--jwt", required=True)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--until-idle", type=float, default=0.0, metavar="SECS")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("watch", parents=[streaming], help="sluice.v1.Messages/Watch")
    p.add_argument("--jwt", required=True)
    p.add_argument("--after", type=int, required=True)
    p.set_defaults(func=cmd_watch, until_current=False)

    p = sub.add_parser("stubs", parents=[common], help="generate the stubs, print their dir")
    p.set_defaults(func=cmd_stubs)

    p = sub.add_parser("jwt", help="print an HS256 JWT")
    p.add_argument("--secret", required=True)
    p.add_argument("--sub", required=True)
    p.add_argument("--exp-in", type=int, default=3600, help="exp = now + SECS (may be < 0)")
    p.add_argument("--no-exp", dest="exp_in", action="store_const", const=None)
    p.set_defaults(func=cmd_jwt)

    args = parser.parse_args(argv)
    if getattr(args, "stall_after", None) is not None and args.stall_secs <= 0:
        parser.error("--stall-after needs --stall-secs > 0")
    args.func(args)


if __name__ == "__main__":
    main()
