"""Which sources a web client may make the server open: the `--allow-sources` policy.

A web client chooses a source, and for a camera URL the *server* opens the connection: from the
server's network, to whatever host the URL names. Bound beyond loopback, that would let any visitor
make the server fetch its own admin pages or the private network's (server-side request forgery).
So the policy is explicit, and its default depends on who can reach the server:

    upload        a video file uploaded through the page
    webcam        the visitor's own webcam, frames sent by the browser
    urls          rtsp(s):// and http(s):// camera URLs whose host resolves only to public addresses
    private-urls  camera URLs to any host: loopback, private, link-local too (implies urls)
    camera-index  a camera attached to the server, by index (0, 1, ...)
    all           every one of the above

`--allow-sources auto` (the default) is `all` when the server binds a loopback address, and
`upload,webcam,urls` otherwise.

Limits of the URL check, honestly: the host is resolved here, once, and every address must be
public; the video reader (FFmpeg) then resolves the name again when it connects. A name whose DNS
answer changes between the two (DNS rebinding) or an HTTP server that redirects to another host can
still lead the reader to a private address. The check stops the direct request (a typed private or
loopback address, a name that resolves to one), not a hostile DNS server or redirect; a server that
must never reach its private network needs that enforced by the network (a firewall or an egress
proxy) as well.
"""

import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from livesight.errors import InputError

KINDS = ("upload", "webcam", "urls", "private-urls", "camera-index")
EXPOSED_DEFAULT = frozenset({"upload", "webcam", "urls"})
URL_SCHEMES = ("rtsp", "rtsps", "http", "https")
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
NAT64 = ipaddress.ip_network("64:ff9b::/96")
HOST_NAME = re.compile(r"[A-Za-z0-9._-]+")  # a DNS name or IPv4 literal; IPv6 literals come in brackets
FLAG = "--allow-sources"

Resolver = Callable[[str, int], list[str]]


def parse_allowed(text: str) -> frozenset[str] | None:
    """--allow-sources' value -> the kinds allowed, or None for auto (decided by the bind address).
    An argparse `type=`: raises ValueError naming the wrong word."""
    words = [w.strip().lower() for w in str(text).split(",") if w.strip()]
    if words == ["auto"]:
        return None
    if "all" in words:
        words = [w for w in words if w != "all"] + list(KINDS)
    unknown = [w for w in words if w not in KINDS]
    if unknown or not words:
        raise ValueError(f"unknown source kind '{unknown[0] if unknown else text}': use auto, all, or a comma "
                         f"list of {', '.join(KINDS)}")
    kinds = set(words)
    if "private-urls" in kinds:
        kinds.add("urls")
    return frozenset(kinds)


def is_loopback_host(host: str, resolve: Resolver | None = None) -> bool:
    """True when binding `host` serves only this machine (127.0.0.0/8, ::1, or a name resolving only
    there); 0.0.0.0 and :: serve every interface."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        addresses = (resolve or resolve_host)(host, 0)
    except OSError:
        return False  # the bind will fail with its own message
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def is_public(address: str) -> bool:
    """True for a globally routable unicast address. IPv4 embedded in IPv6 (mapped, 6to4, NAT64) is
    judged as the IPv4 address it carries, so ::ffff:127.0.0.1 is loopback, not public."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public(str(embedded))
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (raises OSError when it does not resolve)."""
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


@dataclass(frozen=True)
class SourcePolicy:
    allowed: frozenset[str]
    resolve: Resolver = resolve_host

    @classmethod
    def for_host(cls, allowed: frozenset[str] | None, host: str, resolve: Resolver = resolve_host) -> "SourcePolicy":
        """The policy for a server bound to `host`: `allowed` as given, or by default (None) everything
        on loopback and upload,webcam,urls beyond it."""
        if allowed is None:
            allowed = frozenset(KINDS) if is_loopback_host(host, resolve) else EXPOSED_DEFAULT
        return cls(frozenset(allowed), resolve)

    def describe(self) -> str:
        return ",".join(k for k in KINDS if k in self.allowed)

    def _require(self, kind: str, what: str, why: str = "") -> None:
        if kind in self.allowed:
            return
        wider = ",".join(k for k in KINDS if k in self.allowed | {kind})
        raise InputError(f"this server does not open {what}{why}: it allows only {self.describe() or 'nothing'}. "
                         f"Its operator can allow it by starting it with {FLAG} {wider}")

    def check_upload(self) -> None:
        self._require("upload", "uploaded video files")

    def check_webcam(self) -> None:
        self._require("webcam", "the browser's webcam")

    def camera(self, text: str) -> str:
        """The page's camera field -> a source spec for open_source (webcam:N or the URL), once the
        policy allows it; raises InputError naming the source and the flag that would allow it."""
        text = text.strip()
        shown = text if len(text) <= 200 else text[:200] + "…"
        if text.isdigit():
            self._require("camera-index", f"camera {shown} attached to the server")
            return f"webcam:{text}"
        parts = _split_url(text)
        if "private-urls" in self.allowed:
            return text
        self._require("urls", f"camera URL {shown}")
        port = parts.port or DEFAULT_PORTS[parts.scheme.lower()]
        try:
            addresses = self.resolve(parts.hostname, port)
        except OSError as err:
            raise InputError(f"camera URL {shown}: its host '{parts.hostname}' does not resolve ({err}). "
                             f"Check the name") from None
        private = [a for a in addresses if not is_public(a)]
        if private or not addresses:
            where = private[0] if private else "no address"
            named = parts.hostname if where == parts.hostname else f"{parts.hostname} resolves to {where}, which"
            self._require("private-urls", f"camera URL {shown}", f" ({named} is not a public address)")
        return text


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
        return True
    except ValueError:
        return False


def _split_url(text: str) -> urllib.parse.SplitResult:
    """A camera URL, strictly: a known scheme and a plain host name, so that what is checked here
    is what the reader connects to (no spaces, backslashes or control characters to parse two ways)."""
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme not in URL_SCHEMES:
        raise InputError(f"camera '{text[:200]}': give an rtsp:// or http(s):// URL, or a camera index such as 0")
    if any(c.isspace() or c == "\\" or ord(c) < 32 or ord(c) == 127 for c in text):
        raise InputError(f"camera URL '{text[:200]}' has spaces, backslashes or control characters: "
                         f"give a plain URL")
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
    except ValueError as err:
        raise InputError(f"camera URL '{text[:200]}' is malformed ({err})") from None
    host = parts.hostname or ""
    if "[" in parts.netloc:
        valid = _is_ipv6(host)
    else:
        valid = bool(HOST_NAME.fullmatch(host))
    if not valid:
        raise InputError(f"camera URL '{text[:200]}' names no valid host: write {scheme}://HOST[:PORT]/PATH")
    return parts
