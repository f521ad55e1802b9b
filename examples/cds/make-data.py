#!/usr/bin/env python3
"""Writes the cds example's input files; run it from this directory to regenerate them.

accounts-scan.jsonl  a scan of the Accounts table (DynamoDB-typed items)
account-changes.jsonl  its change stream (Kinesis Data Streams for DynamoDB records)

Account n has uuid 000000nn-0000-4000-8000-0000000000nn and number +1555000nnnn.
"""
import base64
import json
import uuid


def b64(b):
    return base64.b64encode(b).decode()


def acct(n):
    return uuid.UUID("%08x-0000-4000-8000-%012x" % (n, n)).bytes


def item(n, number, v, c=True, keys=True, d=None):
    it = {"U": {"B": b64(acct(n))}, "V": {"N": str(v)}}
    if number is not None:
        it["P"] = {"S": number}
    if c is not None:
        it["C"] = {"BOOL": c}
    if keys:
        it["PNI"] = {"B": b64(bytes([0x50, n]) * 8)}
        it["UAK"] = {"B": b64(bytes([0xA0, n]) * 8)}
    it["D"] = {"B": b64(json.dumps(d or {"v": v}, separators=(",", ":")).encode())}
    return it


def change(name, n, t, old=None, new=None, seq=[0]):
    seq[0] += 1
    ddb = {"ApproximateCreationDateTime": t, "Keys": {"U": {"B": b64(acct(n))}},
           "SequenceNumber": str(49650000000000000000 + seq[0]), "SizeBytes": 300}
    if old is not None:
        ddb["OldImage"] = old
    if new is not None:
        ddb["NewImage"] = new
    return {"eventID": "%032x" % seq[0], "eventName": name, "dynamodb": ddb, "tableName": "Accounts",
            "recordFormat": "application/json", "eventSource": "aws:dynamodb"}


blob13 = {"pni": str(uuid.UUID(bytes=bytes([0x50, 13]) * 8)), "uak": b64(bytes([0xA0, 13]) * 8)}
scan = [
    item(11, "+15550000011", 1),
    item(12, "+15550000012", 1, c=False),
    item(13, "+15550000013", 3, keys=False, d=blob13),   # PNI and UAK only inside the D blob
    item(14, "+15550000014", 5, c=None),                 # no C: not discoverable
    item(21, "+15550000021", 1),
    item(31, "+15550000031", 1),
    item(22, None, 1),                                   # no P: dead-lettered
]
T = 1_700_000_000_000
changes = [
    # 11: only V and D change -> nothing on any output
    change("MODIFY", 11, T + 1000, item(11, "+15550000011", 1), item(11, "+15550000011", 2)),
    # 11: new number -> remove +...011, upsert +...111
    change("MODIFY", 11, T + 2000, item(11, "+15550000011", 2), item(11, "+15550000111", 3)),
    # 13: stops being discoverable
    change("MODIFY", 13, T + 3000, item(13, "+15550000013", 3, keys=False, d=blob13),
           item(13, "+15550000013", 4, c=False, keys=False, d=blob13)),
    # 14: a change older than the scanned version (5): filtered through, but the directory keeps v5
    change("MODIFY", 14, T - 9000, item(14, "+15550000014", 3, c=None), item(14, "+15550000099", 4, c=None)),
    # 21: account deleted
    change("REMOVE", 21, T + 4000, old=item(21, "+15550000021", 1)),
    # 41 takes +...031 (delivered first) after 31 moved to +...032 (delivered second):
    # the directory still maps +...031 to 41
    change("INSERT", 41, T + 6000, new=item(41, "+15550000031", 1)),
    change("MODIFY", 31, T + 5000, item(31, "+15550000031", 1), item(31, "+15550000032", 2)),
    # bad records: an unknown event and an image without U
    dict(change("INSERT", 51, T + 7000, new=item(51, "+15550000051", 1)), eventName="UPSERT"),
    change("MODIFY", 52, T + 8000, {"P": {"S": "+15550000052"}}, {"P": {"S": "+15550000052"}, "V": {"N": "2"}}),
]
with open("accounts-scan.jsonl", "w") as f:
    f.writelines(json.dumps(i, separators=(",", ":")) + "\n" for i in scan)
with open("account-changes.jsonl", "w") as f:
    f.writelines(json.dumps(c, separators=(",", ":")) + "\n" for c in changes)
