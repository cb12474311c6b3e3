"""Coverage-guided fuzzing of the untrusted-input parsers with atheris (libFuzzer), run by hand.

hypothesis (tests/test_fuzz.py) explores what its strategies describe; libFuzzer follows branch
coverage into what they don't. Both check the same properties, the check_* functions there.

    .venv/bin/pip install atheris                       # not a test dependency
    mkdir -p bench/work/fuzz
    .venv/bin/python bench/fuzz_atheris.py -max_total_time=600 -artifact_prefix=bench/work/fuzz/
    .venv/bin/python bench/fuzz_atheris.py bench/work/fuzz/crash-<sha1>     # replay one input

Turn a failing input into an @example in tests/test_fuzz.py.
"""

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["addons", "pricing"]):
    from tests import test_fuzz as props

STREAMS = list(props.STREAMS.values())


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    target = fdp.ConsumeIntInRange(0, 6)
    if target == 0:
        props.check_forward_token(fdp.ConsumeUnicode(200))
    elif target == 1:
        props.check_read_credential([("authorization", fdp.ConsumeBytes(100))], fdp.ConsumeUnicode(50) or None)
    elif target == 2:
        signed = fdp.ConsumeBool()
        claims = fdp.ConsumeBytes(300)
        props.check_signed_token(props.claims_token(claims) if signed else claims.decode("latin-1"))
    elif target == 3:
        props.check_metadata(fdp.ConsumeUnicode(400))
    elif target == 4:
        props.check_forward_target(fdp.ConsumeUnicode(200))
    else:  # a provider stream, damaged or not, then chunked: as the whole, never negative
        args, upstream, client = STREAMS[fdp.ConsumeIntInRange(0, len(STREAMS) - 1)]
        cuts = [fdp.ConsumeIntInRange(0, len(upstream)) for _ in range(fdp.ConsumeIntInRange(0, 8))]
        payload = bytearray(upstream)
        for _ in range(fdp.ConsumeIntInRange(0, 4) if target == 6 else 0):
            at = fdp.ConsumeIntInRange(0, len(payload))
            payload[at:at + fdp.ConsumeIntInRange(0, 2)] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 3))
        payload = bytes(payload)
        whole = props.run(args, [payload])
        assert props.run(args, props.chunked(payload, cuts)) == whole
        assert payload != upstream or whole[0] == client


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
