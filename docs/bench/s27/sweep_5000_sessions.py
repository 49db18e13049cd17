"""Time app.session.remove_save_temporaries on N kept session folders (each with its studies/ and two
temporaries among ten real-looking files), as a server start finds them. Session 26's figure (0.26 s for 5000)
came from a throwaway script; this is it, recorded:
    PYTHONPATH=. .venv/bin/python docs/bench/s27/sweep_5000_sessions.py 5000
"""
import secrets
import sys
import tempfile
import time
from pathlib import Path

from app.session import SESSION_ID, remove_save_temporaries

n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    for i in range(n):
        sid = secrets.token_hex(16)
        assert SESSION_ID.match(sid), sid
        d = root / sid
        (d / "studies").mkdir(parents=True)
        for name in ("labels.npz", "state.json", "prompt.npz"):
            (d / name).write_bytes(b"x")
        for k in range(6):
            (d / "studies" / f"s{k}.npz").write_bytes(b"x")
        if i % 50 == 0:  # an interrupted save here and there
            (d / ".labels.npz.tmp1").write_bytes(b"x")
    t = time.perf_counter()
    removed = remove_save_temporaries(root)
    took = time.perf_counter() - t
print(f"{n} session folders: remove_save_temporaries {took:.3f} s, {removed} temporaries removed")
