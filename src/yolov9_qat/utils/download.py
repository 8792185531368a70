"""Resumable, verified HTTP downloads (the data commands' fetcher; no network is touched at import).

:func:`download_file` writes ``<dest>.part`` and renames it into place only when the transfer is
complete and its checksum (``md5:<hex>`` / ``sha256:<hex>``) matches; an interrupted transfer resumes with
a Range request, retried with a doubling delay. Errors are one-line :class:`~yolov9_qat.errors.DataError`
/ :class:`~yolov9_qat.errors.UserError` messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from tqdm import tqdm

from yolov9_qat.errors import DataError

LOGGER = logging.getLogger("yolov9_qat.data")

TIMEOUT = 30.0  # seconds per connect / read
CHUNK = 1 << 20
RETRY_DELAY = 2.0  # seconds before the first retry of an interrupted download; doubles each time


def one_line(obj: object) -> str:
    return " ".join(str(obj).split())


class _Interrupted(Exception):
    """A transfer that stopped early but may be resumed."""


def parse_checksum(checksum: str | None) -> tuple[str, str] | None:
    if not checksum:
        return None
    algo, _, digest = checksum.partition(":")
    if not digest:  # a bare hex digest: MD5 by length, else SHA-256
        algo, digest = ("md5" if len(checksum) == 32 else "sha256"), checksum
    algo, digest = algo.lower(), digest.strip().lower()
    if algo not in ("md5", "sha256"):
        raise ValueError(f"unsupported checksum algorithm {algo!r} (md5 or sha256)")
    return algo, digest


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: Path, checksum: str | None, what: str, delete: bool = True) -> None:
    """Raise :class:`DataError` if the digest of ``path`` is not ``checksum`` (deleting it if ``delete``)."""
    parsed = parse_checksum(checksum)
    if parsed is None:
        return
    algo, want = parsed
    got = file_digest(path, algo)
    if got != want:
        if delete:
            path.unlink(missing_ok=True)
        hint = "; the file was deleted, run the command again to download it anew" if delete else ""
        raise DataError(f"{what} failed its {algo} check (expected {want}, got {got}){hint}")
    LOGGER.info("%s: %s checksum OK", what, algo)


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes START-END/TOTAL`` or ``bytes */TOTAL`` -> ``(START, TOTAL)`` (None where unknown)."""
    if not value:
        return None, None
    unit, _, spec = value.strip().partition(" ")
    if unit.lower() != "bytes":
        return None, None
    span, _, total = spec.partition("/")
    start = None
    if span != "*":
        with contextlib.suppress(ValueError):
            start = int(span.split("-")[0])
    tot = None
    with contextlib.suppress(ValueError):
        tot = int(total)
    return start, tot


def check_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DataError(
            f"not enough disk space in {folder} for {what}: needs {needed / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free"
        )


def _fetch_once(url: str, part: Path, timeout: float, progress: bool, desc: str) -> None:
    """One HTTP request: continue ``part`` from its size, or restart it; raise :class:`_Interrupted`
    when the body stops before its announced length."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "yolov9-qat", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the part may already hold the whole file
            _, total = _content_range(e.headers.get("Content-Range"))
            e.close()
            if total == offset:
                return
            LOGGER.warning("%s: server refused to resume at byte %d; starting over", desc, offset)
            part.unlink()
            raise _Interrupted("range not satisfiable") from e
        e.close()
        if e.code >= 500:
            raise _Interrupted(f"HTTP {e.code} {e.reason}") from e
        raise DataError(f"could not download {url}: HTTP {e.code} {one_line(e.reason)}") from e

    with resp:
        length = resp.headers.get("Content-Length")
        remaining = int(length) if length and length.isdigit() else None
        if resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                LOGGER.warning(
                    "%s: server resumed at byte %s instead of %d; starting over", desc, start, offset
                )
                part.unlink()
                raise _Interrupted("unexpected Content-Range")
            mode = "ab"
        else:  # 200: the whole file, whatever we asked for
            if offset:
                LOGGER.warning("%s: server does not support resuming; starting over", desc)
            offset, mode = 0, "wb"
            total = remaining
        if total is None and remaining is not None:
            total = offset + remaining
        if total is not None:
            check_space(part.parent, total - offset, desc)

        received = 0
        with (
            open(part, mode) as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            try:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, HTTPException) as e:  # reset, timeout, IncompleteRead, ...
                raise _Interrupted(one_line(e) or type(e).__name__) from e
        if remaining is not None and received < remaining:
            raise _Interrupted(f"connection closed after {offset + received} of {total} bytes")


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    checksum: str | None = None,
    *,
    timeout: float = TIMEOUT,
    retries: int = 3,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resuming ``<dest>.part`` left by an earlier attempt.

    ``checksum`` is ``"md5:<hex>"`` / ``"sha256:<hex>"`` (or a bare hex digest). An interrupted transfer
    is resumed up to ``retries`` times in this call (HTTP ``Range``; a server that answers 200 instead
    of 206 restarts the file); otherwise the ``.part`` stays for the next call. The final name appears
    only once the file is complete and matches ``checksum``. An existing ``dest`` is returned as is.
    Raises :class:`DataError` (one line, ``could not download URL: reason``) on HTTP errors, unreachable
    hosts, time-outs and checksum mismatches.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.exists():
        LOGGER.info("%s: resuming from %d bytes", dest.name, part.stat().st_size)
    attempt = 0
    while True:
        try:
            _fetch_once(url, part, timeout, progress, dest.name)
            break
        except _Interrupted as e:
            reason = str(e)
        except urllib.error.URLError as e:
            reason = one_line(e.reason)
            if not isinstance(e.reason, TimeoutError):
                raise DataError(f"could not download {url}: {reason}") from e
        except TimeoutError as e:
            reason = f"timed out after {timeout:g} s" if not str(e) else one_line(e)
        except (OSError, HTTPException) as e:
            raise DataError(f"could not download {url}: {one_line(e) or type(e).__name__}") from e
        if attempt >= retries:
            kept = " (the partial file is kept; run again to resume)" if part.exists() else ""
            raise DataError(f"could not download {url}: {reason}{kept}")
        attempt += 1
        delay = RETRY_DELAY * 2 ** (attempt - 1)
        LOGGER.warning("%s: %s; retrying in %g s (%d/%d)", dest.name, reason, delay, attempt, retries)
        time.sleep(delay)

    verify_checksum(part, checksum, f"download of {url}")
    os.replace(part, dest)
    return dest


def sidecar_checksum(url: str, timeout: float) -> str | None:
    """The MD5 in ``<url>.md5`` when the server has one (``<hex>`` or ``<hex>  <name>``), else None."""
    req = urllib.request.Request(url + ".md5", headers={"User-Agent": "yolov9-qat"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read(4096).decode("utf-8", "replace")
    except (OSError, HTTPException, ValueError):
        return None  # no sidecar (404) or the host is down: the download itself will say so
    try:
        return md5_from_text(text, url + ".md5")
    except DataError as e:  # e.g. a server that answers every path with an HTML page
        LOGGER.warning("%s; downloading without an MD5 check", e)
        return None


def md5_from_text(text: str, where: str) -> str:
    words = text.split()
    digest = words[0].lower() if words else ""
    if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
        raise DataError(f"checksum file {where} does not start with an MD5 hex digest")
    return f"md5:{digest}"
