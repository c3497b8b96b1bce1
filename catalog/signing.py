"""Sign Planetary Computer asset URLs when they are read, not when they are found.

Planetary Computer serves its files from Azure Blob Storage and grants read
access through short-lived SAS tokens (about an hour). A job that signed
hrefs at search time would fail part-way through, so search results keep
plain hrefs and readers call :func:`sign_planetary_computer_href` just before
opening a file. Tokens are cached per storage account and container until
shortly before they expire.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timedelta, timezone
from urllib.parse import urlparse

import requests

logger = logging.getLogger(__name__)

TOKEN_ENDPOINT = "https://planetarycomputer.microsoft.com/api/sas/v1/token"
SUBSCRIPTION_KEY_ENV = "PC_SDK_SUBSCRIPTION_KEY"
_BLOB_HOST_SUFFIX = ".blob.core.windows.net"
_RENEW_BEFORE = timedelta(minutes=5)

_tokens: dict[tuple[str, str, str], tuple[str, datetime]] = {}
_tokens_lock = threading.Lock()


def sign_planetary_computer_href(href: str, *, token_endpoint: str = TOKEN_ENDPOINT, timeout_s: float = 30.0) -> str:
    """Return ``href`` with a valid SAS token appended if it is an Azure Blob URL.

    Other hrefs (local paths, ``s3://``, other hosts) and URLs that already
    carry a query string are returned unchanged, so readers can call this on
    every href. Safe to call from several threads.

    Parameters
    ----------
    href
        Asset URL such as ``https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/...``.
    token_endpoint
        Planetary Computer SAS token API; the token for a blob comes from
        ``{token_endpoint}/{account}/{container}``. A subscription key in the
        ``PC_SDK_SUBSCRIPTION_KEY`` environment variable is sent along.
    timeout_s
        Timeout of the token request in seconds.

    Raises
    ------
    RuntimeError
        When the token request fails; the message names the URL and status.
    """
    parsed = urlparse(href)
    if parsed.scheme != "https" or not parsed.netloc.endswith(_BLOB_HOST_SUFFIX) or parsed.query:
        return href
    account = parsed.netloc[: -len(_BLOB_HOST_SUFFIX)]
    container = parsed.path.lstrip("/").split("/", 1)[0]
    return f"{href}?{_token(token_endpoint, account, container, timeout_s)}"


def _token(endpoint: str, account: str, container: str, timeout_s: float) -> str:
    key = (endpoint, account, container)
    now = datetime.now(timezone.utc)
    with _tokens_lock:
        cached = _tokens.get(key)
        if cached is not None and cached[1] - _RENEW_BEFORE > now:
            return cached[0]

        url = f"{endpoint.rstrip('/')}/{account}/{container}"
        headers = {}
        if os.environ.get(SUBSCRIPTION_KEY_ENV):
            headers["Ocp-Apim-Subscription-Key"] = os.environ[SUBSCRIPTION_KEY_ENV]
        try:
            response = requests.get(url, headers=headers, timeout=timeout_s)
        except requests.RequestException as error:
            raise RuntimeError(f"SAS token request to {url} failed: {error}; check the network or retry") from None
        if not response.ok:
            raise RuntimeError(
                f"SAS token request to {url} failed with HTTP {response.status_code}: {response.text[:200]}; "
                f"set {SUBSCRIPTION_KEY_ENV} if the rate limit was hit, or retry later"
            )
        body = response.json()
        token = body["token"]
        expiry = datetime.fromisoformat(body["msft:expiry"].replace("Z", "+00:00"))
        _tokens[key] = (token, expiry)
        logger.info("new SAS token for %s/%s, valid until %s", account, container, expiry.isoformat())
        return token
