"""Downloading a blob: https (http only for loopback or when allowed),
file:// for local mirrors, redirects followed only to https, proxies from
the environment (httpx's trust_env), streamed into a `BlobWriter`."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from fbuild_watch.errors import RuntimeFailure
from fbuild_watch.lnk.cache import CHUNK, BlobWriter

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: no firmware asset is bigger; a runaway server is
MAX_REDIRECTS = 10

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class FetchPolicy:
    allow_http: bool = False  # plain http to non-loopback hosts
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = 30.0


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, policy: FetchPolicy) -> None:
    """Refuse a URL the policy does not allow, with the reason."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("https", "file"):
        return
    if scheme == "http":
        if _loopback(parts.hostname) or policy.allow_http:
            return
        raise RuntimeFailure(
            f"refusing plain http:// for {parts.hostname} "
            "(use https, or allow_http = true in [lnk])"
        )
    raise RuntimeFailure(f"unsupported URL scheme {scheme!r} in {url}")


def url_label(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class Fetcher:
    def __init__(self, policy: FetchPolicy | None = None) -> None:
        self.policy = policy or FetchPolicy()
        self.requests = 0  # network requests made (tests: a cache hit makes none)

    def fetch(
        self, url: str, writer: BlobWriter, *, size: int | None, progress: Progress | None = None
    ) -> None:
        check_url(url, self.policy)
        if urlsplit(url).scheme.lower() == "file":
            self._fetch_file(url, writer, size, progress)
        else:
            self._fetch_http(url, writer, size, progress)

    def _fetch_file(
        self, url: str, writer: BlobWriter, size: int | None, progress: Progress | None
    ) -> None:
        path = Path(unquote(urlsplit(url).path))
        try:
            f = path.open("rb")
        except OSError as exc:
            raise RuntimeFailure(f"cannot read {path}: {exc.strerror or exc}") from None
        with f:
            while True:
                try:
                    chunk = f.read(CHUNK)
                except OSError as exc:  # a read error is the source's, not the cache's
                    raise RuntimeFailure(f"cannot read {path}: {exc.strerror or exc}") from None
                if not chunk:
                    break
                writer.write(chunk)
                if progress:
                    progress(writer.size, size)

    def _fetch_http(
        self, url: str, writer: BlobWriter, size: int | None, progress: Progress | None
    ) -> None:
        import httpx  # noqa: PLC0415 - only a download pays for importing it

        timeout = httpx.Timeout(self.policy.timeout_s)
        try:
            with httpx.Client(follow_redirects=False, timeout=timeout, trust_env=True) as client:
                for _ in range(MAX_REDIRECTS + 1):
                    self.requests += 1
                    with client.stream("GET", url) as resp:
                        if resp.is_redirect:
                            target = urljoin(url, resp.headers.get("location", ""))
                            if urlsplit(target).scheme.lower() != "https":
                                raise RuntimeFailure(
                                    f"refusing redirect from {url_label(url)} to non-https "
                                    f"{url_label(target)}"
                                )
                            url = target
                            continue
                        if resp.status_code >= 400:
                            raise RuntimeFailure(
                                f"HTTP {resp.status_code} {resp.reason_phrase} "
                                f"from {url_label(url)}"
                            )
                        length = resp.headers.get("content-length")
                        total = int(length) if length and length.isdigit() else size
                        if total is not None and total > writer.limit:
                            raise RuntimeFailure(
                                f"{url_label(url)} is {total} bytes, over the limit of "
                                f"{writer.limit}"
                            )
                        for chunk in resp.iter_bytes(CHUNK):
                            writer.write(chunk)
                            if progress:
                                progress(writer.size, total)
                        return
                raise RuntimeFailure(f"too many redirects from {url_label(url)}")
        except httpx.ConnectError as exc:
            host = urlsplit(url).netloc
            raise RuntimeFailure(f"cannot connect to {host}: {_reason(exc)}") from None
        except httpx.TimeoutException:
            raise RuntimeFailure(f"timed out fetching {url_label(url)}") from None
        except httpx.HTTPError as exc:
            raise RuntimeFailure(f"fetching {url_label(url)} failed: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    # "[Errno 111] Connection refused" -> "Connection refused"
    if text.startswith("[Errno") and "] " in text:
        text = text.split("] ", 1)[1]
    return " ".join(text.split())
