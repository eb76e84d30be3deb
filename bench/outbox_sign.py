"""`sign_headers` under timeit: one 32-byte HMAC key, a 400-byte body (µs per call).

    .venv/bin/python bench/outbox_sign.py [--calls 200000]

Run it from each tree alternately (it imports its own tree's relay first); prints the
minimum of 5 repeats, three times.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path[:1] != [str(ROOT)]:
    sys.path.insert(0, str(ROOT))

from relay.core.signing import generate_secret, parse_secret, sign_headers  # noqa: E402


def main(calls: int) -> None:
    key = parse_secret(generate_secret())
    body = (b'{"type":"subscription.renewed","data":{"id":"abc","n":12345678,"x":"'
            + b"y" * 300 + b'"}}')
    msg_id = "evt_01HZX3KJ4Q8R9ZT6B5N2M7C1VW"
    for _ in range(3):
        best = min(timeit.repeat(lambda: sign_headers(msg_id, 1733472000, body, (key,)),
                                 number=calls, repeat=5))
        print(f"sign_headers {best / calls * 1e6:.3f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200000)
    main(parser.parse_args().calls)
