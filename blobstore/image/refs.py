"""Tags: the mutable names ``refs/NAME/TAG`` that point at a manifest id.

A reference given by a person is ``NAME:TAG`` (the tag defaults to ``latest``) or a manifest
id itself. Names are lowercase path-like words (``library/debian``), tags as OCI allows.
What a ref object holds is read back as untrusted text and checked. Thread-safe as the
object store is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import NotFound, RefNotFound, StoreError, UsageError
from ..store.base import ObjectStore
from ..store.digest import is_blob_id

PREFIX = "refs/"
_NAME_PART = r"[a-z0-9]+(?:[._-][a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_NAME_PART}(?:/{_NAME_PART})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True, slots=True)
class Ref:
    name: str
    tag: str

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"

    @property
    def key(self) -> str:
        return f"{PREFIX}{self.name}/{self.tag}"


class MalformedRef(StoreError):
    """A ref object that does not hold a manifest id."""


def parse_ref(text: str, *, new: bool = False) -> Ref:
    """``NAME[:TAG]`` as a Ref; UsageError says what a valid one looks like. ``new``: a
    tag about to be made, whose name must not read as a manifest id (``Refs.set``)."""
    name, _, tag = text.rpartition(":") if ":" in text else (text, "", "latest")
    if new and is_blob_id(name):
        raise _id_like(name)
    if not _NAME_RE.fullmatch(name) or len(name) > 255:
        raise UsageError(f"invalid image name {name!r}: use lowercase letters, digits and "
                         "'.', '_', '-' separated by '/', e.g. library/debian:12")
    if not _TAG_RE.fullmatch(tag):
        raise UsageError(f"invalid tag {tag!r} in {text!r}: use letters, digits, '.', '_', '-' "
                         "(at most 128, not starting with '.' or '-')")
    return Ref(name, tag)


def _id_like(name: str) -> UsageError:
    return UsageError(f"the image name {name} is 64 hex digits, which reads as a manifest "
                      "id; choose another name")


class Refs:
    """The tags of one store."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    def get(self, ref: Ref) -> str:
        try:
            text = self.objects.get(ref.key).decode("ascii", "replace").strip()
        except NotFound:
            raise RefNotFound(f"no image {ref} in {self.objects}; `thaw ls` lists them") from None
        if not is_blob_id(text):
            raise MalformedRef(f"{ref} in {self.objects} holds no manifest id; push it again")
        return text

    def set(self, ref: Ref, manifest_id: str) -> None:
        """Point ``ref`` at ``manifest_id``. A name of 64 hex digits is refused: a bare ref
        of that name would read as a manifest id, never as this tag."""
        if not is_blob_id(manifest_id):
            raise ValueError(f"not a manifest id: {manifest_id!r}")
        if is_blob_id(ref.name):
            raise _id_like(ref.name)
        self.objects.put(ref.key, (manifest_id + "\n").encode())

    def delete(self, ref: Ref) -> None:
        self.objects.delete(ref.key)

    def list(self) -> Iterator[tuple[Ref, str]]:
        """Every (ref, manifest id) whose ref object is well formed, sorted; ``scan`` shows
        the broken ones too."""
        return ((ref, mid) for ref, mid in self.scan() if mid is not None)

    def scan(self) -> Iterator[tuple[Ref, str | None]]:
        """Every (ref, manifest id), sorted; the id is None where the ref object holds
        garbage (``thaw ls`` shows it as broken)."""
        refs = []
        for key in self.objects.list(PREFIX):
            name, _, tag = key[len(PREFIX):].rpartition("/")
            if _NAME_RE.fullmatch(name) and _TAG_RE.fullmatch(tag):
                refs.append(Ref(name, tag))
        for ref in sorted(refs, key=str):
            try:
                yield ref, self.get(ref)
            except RefNotFound:
                continue  # deleted meanwhile
            except MalformedRef:
                yield ref, None

    def scan_keys(self) -> Iterator[tuple[str, str | None, str | None]]:
        """``(name, manifest id, None)`` for every object under ``refs/``, or ``(name,
        None, reason)`` where its key is no valid ref or it holds no manifest id; ``name``
        is ``NAME:TAG``, or the key where that does not parse. For those who must not skip
        what is malformed (the collector, ``thaw check``)."""
        for key in self.objects.list(PREFIX):
            name, _, tag = key[len(PREFIX):].rpartition("/")
            try:
                ref = parse_ref(f"{name}:{tag}")
            except UsageError:
                yield key, None, "not a valid ref"
                continue
            try:
                text = self.objects.get(key).decode("ascii", "replace").strip()
            except NotFound:
                continue  # removed meanwhile
            yield ((str(ref), text, None) if is_blob_id(text)
                   else (str(ref), None, "holds no manifest id"))

    def resolve(self, text: str) -> str:
        """The manifest id that ``text`` (``NAME:TAG`` or a manifest id) names."""
        if is_blob_id(text):
            return text
        return self.get(parse_ref(text))
