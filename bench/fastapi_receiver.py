"""The FastAPI receivers bench/ingest.py compares relay with: their venvs and their server.

The backend most tutorials show: FastAPI on uvicorn, one worker, checking the Attesto
HMAC (relay's own `relay/attesto/signature.py`, stdlib only), parsing the JSON and
keeping its dedupe set on `eventId` in memory; nothing durable. Two flavours, each in its
own venv, made on first use under `bench/.venvs/` (or `$RELAY_BENCH_VENVS`; never
committed):
- `fastapi`: `pip install fastapi uvicorn` (asyncio loop, h11 parser);
- `fastapi-standard`: `pip install 'fastapi[standard]'` (uvloop and httptools, which
  uvicorn picks by itself when they are installed).
Run as a script by that venv's Python: `python bench/fastapi_receiver.py PORT` serves
POST /v1/webhooks/attesto and GET /healthz on 127.0.0.1:PORT until SIGTERM.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at
# runtime, and `Request` is imported inside serve() (this file is imported without FastAPI).
import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
FLAVOURS = {"fastapi": ("fastapi", "uvicorn"), "fastapi-standard": ("fastapi[standard]",)}
LABELS = {"fastapi": "FastAPI + uvicorn", "fastapi-standard": "fastapi[standard] (uvloop)"}
# Issue 19: relay's accepted/s must reach at least this times each receiver's (one core).
TARGETS = {"fastapi": 1.25, "fastapi-standard": 1.0}
_REPORTED = ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic")


def venv_root() -> Path:
    return Path(os.environ.get("RELAY_BENCH_VENVS") or BENCH / ".venvs")


def ensure_venv(flavour: str) -> Path:
    """The Python of `flavour`'s venv, made (and its packages installed) on first use."""
    home = venv_root() / flavour
    python = home / "bin" / "python"
    done = home / ".installed"
    if not done.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(home)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *FLAVOURS[flavour]],
                       check=True, stdout=subprocess.DEVNULL)
        done.write_text("\n".join(FLAVOURS[flavour]) + "\n")
    return python


def versions(python: Path) -> dict[str, str]:
    """The versions of the packages that matter in that venv (reported with the figures)."""
    code = ("import json, importlib.metadata as m\nout = {}\n"
            f"for n in {_REPORTED!r}:\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: pass\nprint(json.dumps(out))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    found: dict[str, str] = json.loads(out.stdout)
    return found


def command(python: Path, port: int, access_log: bool) -> list[str]:
    return [str(python), str(Path(__file__).resolve()), str(port),
            "access-log" if access_log else "no-access-log"]


def serve(port: int, access_log: bool) -> None:
    """The receiver (runs in a FastAPI venv, with the worktree root on sys.path)."""
    import time

    import uvicorn
    from fastapi import FastAPI, HTTPException, Request

    sys.path.insert(0, str(ROOT))
    from relay.attesto.signature import AttestoSignatureError, verify_attesto

    secret = os.environ["BENCH_WEBHOOK_SECRET"]
    seen: set[str] = set()
    app = FastAPI()

    @app.post("/v1/webhooks/attesto")
    async def attesto(request: Request) -> dict[str, str]:
        raw = await request.body()
        try:
            verify_attesto(request.headers.get("X-Attesto-Signature"), raw, [secret],
                           int(time.time()))
        except AttestoSignatureError as exc:
            raise HTTPException(status_code=401, detail=exc.reason) from None
        event_id = json.loads(raw)["eventId"]
        if event_id in seen:
            return {"status": "duplicate"}
        seen.add(event_id)
        return {"status": "accepted"}

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    # uvicorn's defaults otherwise (loop and http "auto": uvloop/httptools if installed).
    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, access_log=access_log,
                log_level="info" if access_log else "warning")


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2:3] != ["no-access-log"])
