"""A character's LoRA weights: a safetensors file uploaded, or fetched once from an https URL.

Every file is checked before anything is written: its size, the safetensors layout (an
8-byte header length, a JSON header whose tensors lie inside the file) and that it holds
LoRA tensors at all (names with `lora`). The bytes go to S3 under
`loras/{user}/{character}/{sha256}.safetensors`; the character row keeps the
`CharacterLora` (key, sha256, size, trigger word, weight, source URL) that travels with
every job, so a generator fetches the file once and never the URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import socket
import struct
from urllib.parse import urlsplit

import httpx

from imagegen.blobstore import BlobStore
from schemas.characters import CharacterLora

PREFIX = "loras/"
CONTENT_TYPE = "application/octet-stream"
_MAX_HEADER = 16 * 1024 * 1024


class LoraRefusedError(Exception):
    """The LoRA is unusable: `msg` says why, `status_code` how to answer."""

    def __init__(self, msg: str, status_code: int = 422) -> None:
        super().__init__(msg)
        self.msg = msg
        self.status_code = status_code


def check_lora(data: bytes, max_bytes: int) -> str:
    """The file's sha256 if it is a safetensors file of LoRA weights; else LoraRefusedError."""
    if not data:
        raise LoraRefusedError("the file is empty")
    if len(data) > max_bytes:
        raise LoraRefusedError(f"larger than {max_bytes} bytes", 413)
    if len(data) < 8:
        raise LoraRefusedError("not a safetensors file (shorter than its header)")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(_MAX_HEADER, len(data) - 8):
        raise LoraRefusedError("not a safetensors file (its header length is impossible)")
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, ValueError) as exc:
        raise LoraRefusedError("not a safetensors file (its header is not JSON)") from exc
    if not isinstance(header, dict):
        raise LoraRefusedError("not a safetensors file (its header is not a JSON object)")
    body = len(data) - 8 - length
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    for name, entry in tensors.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= body
        ):
            raise LoraRefusedError(f"not a safetensors file (tensor {name[:100]!r} is out of it)")
    if not any("lora" in name.lower() for name in tensors):
        raise LoraRefusedError("holds no LoRA weights (no tensor named like lora_A / lora_down)")
    return hashlib.sha256(data).hexdigest()


def check_url(url: str, *, refuse_internal: bool) -> None:
    """Only absolute https URLs without credentials; in production, public hosts only."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError as exc:
        raise LoraRefusedError(f"is not a valid URL ({exc})") from None
    if parts.scheme.lower() != "https" or not host:
        raise LoraRefusedError("must be an absolute https:// URL")
    if parts.username is not None or parts.password is not None:
        raise LoraRefusedError("may not carry credentials (user:password@)")
    if refuse_internal:
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise LoraRefusedError(f"host {host!r} does not resolve") from exc
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if not address.is_global:
                raise LoraRefusedError(f"host {host!r} is not a public address")


async def fetch(client: httpx.AsyncClient, url: str, max_bytes: int) -> bytes:
    """The file at `url`, read at most `max_bytes` + 1 bytes far; LoraRefusedError if not."""
    try:
        async with client.stream("GET", url, follow_redirects=False) as response:
            if response.status_code != 200:
                raise LoraRefusedError(f"answered HTTP {response.status_code}, not 200")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise LoraRefusedError(f"larger than {max_bytes} bytes", 413)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise LoraRefusedError(f"larger than {max_bytes} bytes", 413)
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise LoraRefusedError(f"could not be fetched ({type(exc).__name__})") from exc
    return b"".join(chunks)


async def store(
    blobs: BlobStore,
    user_id: str,
    character_id: str,
    data: bytes,
    sha256: str,
    *,
    trigger_word: str,
    weight: float,
    source_url: str | None = None,
) -> CharacterLora:
    """Write the checked file (content-addressed: a second upload of it writes nothing new)."""
    key = f"{PREFIX}{user_id}/{character_id}/{sha256}.safetensors"
    await blobs.put(key, data, CONTENT_TYPE)
    return CharacterLora(
        key=key,
        sha256=sha256,
        size=len(data),
        trigger_word=trigger_word,
        weight=weight,
        source_url=source_url,
    )


async def from_url(
    blobs: BlobStore,
    user_id: str,
    character_id: str,
    url: str,
    *,
    trigger_word: str,
    weight: float,
    max_bytes: int,
    timeout_s: float,
    refuse_internal: bool,
    transport: httpx.AsyncBaseTransport | None = None,
) -> CharacterLora:
    """Fetch, check and store the LoRA at `url` (once: jobs carry the stored copy)."""
    await asyncio.to_thread(check_url, url, refuse_internal=refuse_internal)
    async with httpx.AsyncClient(timeout=timeout_s, transport=transport) as client:
        data = await fetch(client, url, max_bytes)
    sha256 = await asyncio.to_thread(check_lora, data, max_bytes)
    return await store(
        blobs,
        user_id,
        character_id,
        data,
        sha256,
        trigger_word=trigger_word,
        weight=weight,
        source_url=url,
    )
