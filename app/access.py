"""Who may use a server: anyone on this machine when bound to loopback, token holders otherwise.

Why: ``medseg serve`` and ``medseg labelserver`` show patients' images; bound to another interface
they are reachable from the network, so they refuse to start without a token and refuse every
request that does not carry it (``Authorization: Bearer TOKEN``, or the login form with the token
as password). The token comes from ``$MEDSEG_TOKEN`` or ``--token-file``; TLS belongs to a reverse
proxy in front (docs/integration.md).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import socket
from pathlib import Path

from app.errors import UsageError

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
LOGIN_USER = "medseg"


def is_loopback(host: str) -> bool:
    """True when ``host`` (a name or an address) only reaches this machine."""
    host = str(host).strip().strip("[]")
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def is_loopback_host_header(value: str | None) -> bool:
    """True when a request's ``Host`` header names this machine: ``localhost`` or a loopback address, any
    port. Never resolved: DNS rebinding makes attacker.example resolve to 127.0.0.1, so a page of that site
    reads a loopback server as its own origin; only the name it asked for tells the request apart."""
    host = str(value or "").strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token_file: str | None = None) -> str | None:
    """The access token from ``token_file`` (first line) or ``$MEDSEG_TOKEN``; None when neither is set."""
    if token_file:
        try:
            text = Path(token_file).read_text(encoding="utf-8").strip().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--token-file {token_file}: cannot read it ({e})") from None
        token = text[0].strip() if text else ""
        if not token:
            raise UsageError(f"--token-file {token_file}: the file is empty; put the token on its first line")
    else:
        token = os.environ.get("MEDSEG_TOKEN", "").strip()
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS:
        raise UsageError(f"the access token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                         "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return token


def required_token(host: str, token_file: str | None = None) -> str | None:
    """The token a server bound to ``host`` must demand: None on loopback without one; an error when a
    non-loopback bind has none."""
    token = read_token(token_file)
    if token is None and not is_loopback(host):
        raise UsageError(f"--host {host} is reachable from the network: set MEDSEG_TOKEN (or --token-file FILE) to "
                         "a secret of at least 16 characters; clients then send it as 'Authorization: Bearer TOKEN'")
    return token


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison (a timing difference must not reveal the token a character at a time)."""
    return given is not None and hmac.compare_digest(str(given).encode(), token.encode())


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (any case of 'bearer'), else None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def make_private(folder: Path) -> bool:
    """Make ``folder`` (created if missing) readable by this account only (0700), unless it is a shared folder (the
    sticky bit, as /tmp when GRADIO_TEMP_DIR names it) or another account's: then one warning, and False.

    Why: files land in medseg's folders with the umask's mode (uploads copied into sessions, Gradio's upload cache,
    exports, 0644 in 0755 folders), so any account on the server could read patients' images and exports from the
    disk, around the cookie that keeps sessions apart."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    st = folder.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o1000:
        log.warning("%s is shared or another account's: not made private; files there are as readable as it is", folder)
        return False
    try:
        os.chmod(folder, 0o700)
    except OSError as e:
        log.warning("cannot make %s private (%s); other accounts may read it", folder, e)
        return False
    return True
