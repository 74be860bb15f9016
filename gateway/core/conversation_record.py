"""A conversation as msgspec structs for durable stores: every branch, each picture once, the active path."""

from __future__ import annotations

import msgspec

from gateway.core.conversation import Conversation
from gateway.core.item_tree import Bounds, IdSource, random_id
from gateway.core.items import Content, Item, Role
from gateway.engine.contract import ChatImage, ToolCall

VERSION = 1


class ImageRecord(msgspec.Struct, array_like=True):
    data: bytes
    mime: str
    width: int
    height: int


class CallRecord(msgspec.Struct, array_like=True):
    id: str
    name: str
    arguments: str


class ItemRecord(msgspec.Struct, array_like=True):
    id: str
    parent: str | None
    born: int
    touched: int
    role: Role
    text: str
    images: list[str]  # the pictures' sha256, each a key of ConversationRecord.images
    call: CallRecord | None
    call_id: str | None
    partial: bool
    turn_id: str | None


class ConversationRecord(msgspec.Struct, array_like=True):
    version: int
    items: list[ItemRecord]  # each parent before its children, siblings in order
    images: dict[str, ImageRecord]
    path: list[str]
    clock: int


class TreeHead(msgspec.Struct, array_like=True):
    """What a store rewrites on every change of a tree kept item by item: the order, the clocks, the path."""

    version: int
    order: list[tuple[str, int]]  # every item's id and `touched` clock, each parent before its children, siblings in order
    path: list[str]
    clock: int


def encode(tree: Conversation) -> ConversationRecord:
    items, images = [], {}
    for item, touched in tree.walk():
        for image in item.content.images:
            images[image.sha256] = image_record(image)
        items.append(item_record(item, touched))
    return ConversationRecord(VERSION, items, images, [item.id for item in tree.path], tree.clock)


def item_record(item: Item, touched: int = 0) -> ItemRecord:
    content = item.content
    call = CallRecord(content.call.id, content.call.name, content.call.arguments) if content.call is not None else None
    images = [image.sha256 for image in content.images]
    role, text, partial = content.role, content.text, content.partial
    return ItemRecord(
        item.id, item.parent, item.born, touched, role, text, images, call, content.call_id, partial, content.turn_id
    )


def image_record(image: ChatImage) -> ImageRecord:
    return ImageRecord(image.data, image.mime, image.width, image.height)


def head(tree: Conversation) -> TreeHead:
    order = [(item.id, touched) for item, touched in tree.walk()]
    return TreeHead(VERSION, order, [item.id for item in tree.path], tree.clock)


def assemble(top: bytes, items: dict[str, bytes], images: dict[str, bytes]) -> ConversationRecord:
    """The record of a tree a store keeps as its head, its items' blobs by id and its pictures' by sha256;
    ValueError where the head names an item the store lacks."""
    tree = msgspec.msgpack.decode(top, type=TreeHead)
    try:
        records = [msgspec.structs.replace(_item_record(items[i]), touched=touched) for i, touched in tree.order]
    except KeyError as missing:
        raise ValueError(f"the stored tree lacks item {missing}") from None
    pictures = {sha: msgspec.msgpack.decode(blob, type=ImageRecord) for sha, blob in images.items()}
    return ConversationRecord(tree.version, records, pictures, tree.path, tree.clock)


_item_record = msgspec.msgpack.Decoder(ItemRecord).decode


def decode(record: ConversationRecord, bounds: Bounds, new_id: IdSource = random_id) -> Conversation:
    """The conversation again, trimmed to `bounds`; ValueError where the record does not form one."""
    if record.version != VERSION:
        raise ValueError(f"conversation record version {record.version} is not {VERSION}")
    pictures = {sha: ChatImage(i.data, i.mime, i.width, i.height, sha) for sha, i in record.images.items()}
    try:
        items = [(_item(r, pictures), r.touched) for r in record.items]
    except KeyError as missing:
        raise ValueError(f"an item shows picture {missing} that the record lacks") from None
    return Conversation.rebuild(bounds, items, record.path, record.clock, new_id)


def dump(tree: Conversation) -> bytes:
    return msgspec.msgpack.encode(encode(tree))


def load(blob: bytes, bounds: Bounds, new_id: IdSource = random_id) -> Conversation:
    """Raises msgspec.DecodeError where `blob` is no record, ValueError where it forms no conversation."""
    return decode(msgspec.msgpack.decode(blob, type=ConversationRecord), bounds, new_id)


def _item(record: ItemRecord, pictures: dict[str, ChatImage]) -> Item:
    call = ToolCall(record.call.id, record.call.name, record.call.arguments) if record.call is not None else None
    images = tuple(pictures[sha] for sha in record.images)
    content = Content(record.role, record.text, images, call, record.call_id, record.partial, record.turn_id)
    return Item(record.id, record.parent, content, record.born)
